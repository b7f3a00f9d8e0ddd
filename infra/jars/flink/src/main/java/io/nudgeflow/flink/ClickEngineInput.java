package io.nudgeflow.flink;

import java.nio.charset.StandardCharsets;
import org.apache.flink.api.common.functions.MapFunction;
import org.apache.flink.types.Row;

/**
 * A clicks-topic record as the engine's input row, keyed by the user id read from its bytes, so
 * that the clicks reach the per-user engine with no Python operator before it: the engine
 * decodes and validates each click itself (udfs/intake.py) and dead-letters what is bad.
 *
 * <p>Input: Row(topic, partition, offset, timestamp, key, value) of {@link
 * KafkaRecordWithMetadataDeserializer}. Output: the engine input row (udfs/flink/descriptors.py,
 * ENGINE_INPUT_ROW): Row("click", user_id, event_time = null (read when decoded), ingest_time =
 * the Kafka timestamp, payload = the value, partition, offset, key, traceparent header).
 *
 * <p>The user id is the ClickEvent's second field (after event_id) in every published version,
 * right after the 10-byte single-object header (see {@link ClickEventTimeAssigner}). A record
 * whose id cannot be read here (no header, truncated, not UTF-8) gets the empty key: the engine
 * rejects it when it decodes it, with the reason, so no record is lost to keying. A key read
 * from a record's bytes is the string Python decodes from them whenever the record is valid;
 * the engine checks it anyway.
 */
public final class ClickEngineInput implements MapFunction<Row, Row> {

    private static final long serialVersionUID = 1L;
    private static final int HEADER = 10; // marker (2) + fingerprint (8)

    @Override
    public Row map(Row record) {
        Object value = record.getField(5);
        byte[] bytes = value instanceof byte[] ? (byte[]) value : null;
        return Row.of("click", userId(bytes), null, record.getField(3), bytes,
                record.getField(1), record.getField(2), record.getField(4),
                record.getArity() > 6 ? record.getField(6) : null);
    }

    /** The user id of a single-object ClickEvent's bytes, or "" when it cannot be read. */
    static String userId(byte[] value) {
        if (value == null || value.length < HEADER + 2
                || (value[0] & 0xff) != 0xC3 || (value[1] & 0xff) != 0x01) {
            return "";
        }
        int[] pos = {HEADER};
        try {
            long eventIdLength = ClickEventTimeAssigner.readLong(value, pos);
            if (eventIdLength < 0 || pos[0] + eventIdLength > value.length) {
                return "";
            }
            pos[0] += (int) eventIdLength;
            long userIdLength = ClickEventTimeAssigner.readLong(value, pos);
            if (userIdLength < 1 || pos[0] + userIdLength > value.length) {
                return "";
            }
            return new String(value, pos[0], (int) userIdLength, StandardCharsets.UTF_8);
        } catch (ArrayIndexOutOfBoundsException | IllegalArgumentException e) {
            return "";
        }
    }
}
