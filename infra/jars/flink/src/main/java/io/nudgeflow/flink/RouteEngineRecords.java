package io.nudgeflow.flink;

import java.nio.ByteBuffer;
import java.util.Arrays;
import java.util.HashMap;
import java.util.Locale;
import java.util.Map;
import org.apache.flink.api.common.functions.FlatMapFunction;
import org.apache.flink.types.Row;
import org.apache.flink.util.Collector;

/**
 * Picks one kind of the per-user engine's records and routes it to its Kafka topic: Row(record,
 * tier, key, value, traceparent) of the engine to Row(topic, key, value, traceparent) of {@link
 * RoutedRecordSerializer}.
 *
 * <p>The engine emits SegmentChanges, TriggerEvents and TriggerDecisions on one output (PyFlink's
 * thread mode drops side outputs yielded from a keyed broadcast function's timers), each marked
 * with its record name; one instance of this function per record kind turns that stream into
 * the job's named outputs. With {@code byTier}, the topic is the prefix plus the lower-case
 * priority tier (P1 to {@code triggers-p1} with the default prefix). In Java, so routing costs
 * no Python call per record.
 *
 * <p>With schema ids (the job's {@code output_wire_format: confluent}), each value leaves in
 * Confluent's wire format: the engine's single-object header ({@code C3 01} and the schema's
 * fingerprint) is replaced by {@code 00} and the 4-byte big-endian id the schema registry gave
 * the target topic's subject; the Avro body is unchanged.
 */
public final class RouteEngineRecords implements FlatMapFunction<Row, Row> {

    private static final long serialVersionUID = 1L;

    private final String record;
    private final String topic;
    private final boolean byTier;
    /** Schema id per target topic; null: values leave as the engine wrote them. */
    private final HashMap<String, Integer> confluentIds;
    /** The single-object header the engine writes for {@code record} (marker + fingerprint). */
    private final byte[] singleObjectHeader;

    /**
     * @param record the record name to keep (e.g. "TriggerEvent")
     * @param topic the topic, or the topic prefix when {@code byTier}
     * @param byTier append the record's lower-case priority tier to {@code topic}
     */
    public RouteEngineRecords(String record, String topic, boolean byTier) {
        this(record, topic, byTier, null, null);
    }

    /**
     * @param record the record name to keep (e.g. "TriggerEvent")
     * @param topic the topic, or the topic prefix when {@code byTier}
     * @param byTier append the record's lower-case priority tier to {@code topic}
     * @param confluentIds the registry's schema id of every target topic, or null
     * @param singleObjectHeader the header of {@code record}'s current schema ({@code C3 01}
     *     and its fingerprint), which every value must start with; null when confluentIds is
     */
    public RouteEngineRecords(String record, String topic, boolean byTier,
            Map<String, Integer> confluentIds, byte[] singleObjectHeader) {
        this.record = record;
        this.topic = topic;
        this.byTier = byTier;
        this.confluentIds = confluentIds == null ? null : new HashMap<>(confluentIds);
        this.singleObjectHeader = singleObjectHeader;
    }

    @Override
    public void flatMap(Row row, Collector<Row> out) {
        if (!record.equals(row.getField(0))) {
            return;
        }
        String target = topic;
        if (byTier) {
            String tier = (String) row.getField(1);
            if (tier == null || tier.isEmpty()) {
                throw new IllegalArgumentException(record + " without a priority tier");
            }
            target = topic + tier.toLowerCase(Locale.ROOT);
        }
        byte[] value = (byte[]) row.getField(3);
        if (confluentIds != null) {
            value = confluentFramed(value, target);
        }
        out.collect(Row.of(target, row.getField(2), value,
                row.getArity() > 4 ? row.getField(4) : null));
    }

    /** The value with its single-object header replaced by 00 and the topic's schema id. */
    private byte[] confluentFramed(byte[] value, String target) {
        Integer id = confluentIds.get(target);
        if (id == null) {
            throw new IllegalStateException("no schema id for topic " + target + " (ids for "
                    + confluentIds.keySet() + "): the job was built without registering it");
        }
        int header = singleObjectHeader.length;
        if (value == null || value.length < header
                || !Arrays.equals(value, 0, header, singleObjectHeader, 0, header)) {
            throw new IllegalStateException("a " + record + " for " + target + " was not written"
                    + " with the schema registered for it (its header is not "
                    + Arrays.toString(singleObjectHeader) + ")");
        }
        byte[] framed = new byte[5 + value.length - header];
        ByteBuffer.wrap(framed).put((byte) 0).putInt(id);
        System.arraycopy(value, header, framed, 5, value.length - header);
        return framed;
    }
}
