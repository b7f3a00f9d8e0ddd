package io.nudgeflow.flink;

import org.apache.flink.api.common.eventtime.SerializableTimestampAssigner;
import org.apache.flink.types.Row;

/**
 * Event time of a clicks-topic record, read from its Avro single-object bytes in the source, so
 * that the Kafka source can keep one watermark per partition (a Python assigner after the source
 * sees the partitions interleaved and, reading a backlog, runs ahead of the slower ones).
 *
 * <p>Input: Row(topic, partition, offset, timestamp, key, value) as emitted by {@link
 * KafkaRecordWithMetadataDeserializer}. The value is C3 01, an 8-byte schema fingerprint, then
 * the ClickEvent body, whose first fields are, in every published version, event_id (string),
 * user_id (string), event_type (enum) and event_time (long): see schemas/ClickEvent.avsc and
 * tests/unit/test_schemas.py, which guards that layout. A record that cannot be read gets
 * Long.MIN_VALUE, which never moves a watermark; the Python decoder dead-letters it.
 */
public final class ClickEventTimeAssigner implements SerializableTimestampAssigner<Row> {

    private static final long serialVersionUID = 1L;
    private static final int HEADER = 10; // marker (2) + fingerprint (8)

    @Override
    public long extractTimestamp(Row row, long recordTimestamp) {
        Object field = row.getField(5);
        if (!(field instanceof byte[])) {
            return Long.MIN_VALUE;
        }
        return eventTime((byte[]) field);
    }

    /** The event_time of a single-object ClickEvent, or Long.MIN_VALUE if unreadable. */
    static long eventTime(byte[] value) {
        if (value.length < HEADER + 4 || (value[0] & 0xff) != 0xC3 || (value[1] & 0xff) != 0x01) {
            return Long.MIN_VALUE;
        }
        int[] pos = {HEADER};
        try {
            skipBytes(value, pos); // event_id
            skipBytes(value, pos); // user_id
            readLong(value, pos); // event_type (enum index)
            return readLong(value, pos); // event_time
        } catch (ArrayIndexOutOfBoundsException | IllegalArgumentException e) {
            return Long.MIN_VALUE;
        }
    }

    private static void skipBytes(byte[] b, int[] pos) {
        long length = readLong(b, pos);
        if (length < 0 || pos[0] + length > b.length) {
            throw new IllegalArgumentException("bad length");
        }
        pos[0] += (int) length;
    }

    /** Avro long: zig-zag varint. */
    private static long readLong(byte[] b, int[] pos) {
        long raw = 0;
        int shift = 0;
        while (true) {
            int next = b[pos[0]++] & 0xff;
            raw |= (long) (next & 0x7f) << shift;
            if ((next & 0x80) == 0) {
                break;
            }
            shift += 7;
            if (shift > 63) {
                throw new IllegalArgumentException("varint too long");
            }
        }
        return (raw >>> 1) ^ -(raw & 1);
    }
}
