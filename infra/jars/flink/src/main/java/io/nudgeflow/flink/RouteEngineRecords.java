package io.nudgeflow.flink;

import java.util.Locale;
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
 */
public final class RouteEngineRecords implements FlatMapFunction<Row, Row> {

    private static final long serialVersionUID = 1L;

    private final String record;
    private final String topic;
    private final boolean byTier;

    /**
     * @param record the record name to keep (e.g. "TriggerEvent")
     * @param topic the topic, or the topic prefix when {@code byTier}
     * @param byTier append the record's lower-case priority tier to {@code topic}
     */
    public RouteEngineRecords(String record, String topic, boolean byTier) {
        this.record = record;
        this.topic = topic;
        this.byTier = byTier;
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
        out.collect(Row.of(target, row.getField(2), row.getField(3),
                row.getArity() > 4 ? row.getField(4) : null));
    }
}
