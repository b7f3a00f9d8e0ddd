package io.nudgeflow.flink;

import java.io.Serializable;
import java.nio.ByteBuffer;
import java.nio.charset.CharacterCodingException;
import java.nio.charset.CodingErrorAction;
import java.nio.charset.StandardCharsets;
import java.util.HashMap;
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
 * user_id (string), event_type (enum) and event_time (long), followed in version 2 by source
 * (enum): see schemas/ClickEvent.avsc and tests/unit/test_schemas.py, which guards that layout.
 *
 * <p><b>A rejected record never moves a watermark.</b> The source runs before Python validates
 * the record (udfs/intake.py), so this assigner applies the part of the validation it can read
 * cheaply from those leading bytes: the value's size, the key (present, not over the id limit),
 * the marker and a known ClickEvent fingerprint, the two ids (1 to maxIdBytes bytes, valid
 * UTF-8, no control character, not blank or invisible-only), both enum indexes in range, and
 * the event-time window: {@code max(minEventTimeMs, ts - maxEventAgeMs) <= event_time <= ts +
 * maxFutureSkewMs}, where ts is the record's Kafka timestamp (the broker's append time on the
 * clicks topic; the age bound is left out when maxEventAgeMs is 0, both ts bounds when the
 * record has no timestamp). A record that fails any of them gets Long.MIN_VALUE, which never
 * moves a watermark; the Python decoder then dead-letters it.
 *
 * <p>Why Long.MIN_VALUE rather than clamping event time to the window: a clamped record would
 * still push the watermark to its append time plus the skew, i.e. as far as the furthest valid
 * event could, on behalf of a record the job throws away; with Long.MIN_VALUE only records that
 * pass these checks count. What Python alone checks (the body past source: prices, quantities,
 * other strings, the properties map; blank-id rules for scripts whose Unicode classes differ
 * between Java and Python) may still let a record Python rejects count here, but its event time
 * then lies inside the window, so it moves the watermark no further than a valid record appended
 * at the same moment could.
 *
 * <p>Every limit comes from the job's configuration (jobs/connectors.py passes them, with the
 * layouts of the ClickEvent versions the codec knows); nothing here duplicates a number.
 */
public final class ClickEventTimeAssigner implements SerializableTimestampAssigner<Row> {

    private static final long serialVersionUID = 2L;
    private static final int HEADER = 10; // marker (2) + fingerprint (8)

    private final long maxFutureSkewMs;
    private final long maxEventAgeMs;
    private final long minEventTimeMs;
    private final int maxIdBytes;
    private final int maxRecordBytes;
    /** Fingerprint (the 8 bytes read little-endian) to the symbol counts of its leading enums. */
    private final HashMap<Long, Layout> layouts = new HashMap<>();

    /** The leading enums of one ClickEvent version: event_type's and (v2) source's size. */
    private static final class Layout implements Serializable {
        private static final long serialVersionUID = 1L;
        final int eventTypes;
        final int sources; // 0: this version has no source enum after event_time

        Layout(int eventTypes, int sources) {
            this.eventTypes = eventTypes;
            this.sources = sources;
        }
    }

    /**
     * @param maxFutureSkewMs an event time may be at most this far ahead of the Kafka timestamp
     * @param maxEventAgeMs and at most this far behind it (0: no age limit)
     * @param minEventTimeMs and never earlier than this (2000-01-01)
     * @param maxIdBytes the longest event_id, user_id and key, in UTF-8 bytes
     * @param maxRecordBytes the longest record value
     * @param layouts the known ClickEvent versions, comma-separated {@code
     *     <fingerprint hex>:<event_type symbols>[:<source symbols>]}
     */
    public ClickEventTimeAssigner(long maxFutureSkewMs, long maxEventAgeMs, long minEventTimeMs,
                                  int maxIdBytes, int maxRecordBytes, String layouts) {
        this.maxFutureSkewMs = maxFutureSkewMs;
        this.maxEventAgeMs = maxEventAgeMs;
        this.minEventTimeMs = minEventTimeMs;
        this.maxIdBytes = maxIdBytes;
        this.maxRecordBytes = maxRecordBytes;
        for (String entry : layouts.split(",")) {
            String[] parts = entry.trim().split(":");
            if (parts.length < 2 || parts[0].length() != 16) {
                throw new IllegalArgumentException("ClickEventTimeAssigner: bad layout '" + entry
                        + "'; expected <16 hex digits>:<event_type symbols>[:<source symbols>]");
            }
            byte[] fp = new byte[8];
            for (int i = 0; i < 8; i++) {
                fp[i] = (byte) Integer.parseInt(parts[0].substring(2 * i, 2 * i + 2), 16);
            }
            this.layouts.put(littleEndian(fp, 0), new Layout(Integer.parseInt(parts[1]),
                    parts.length > 2 ? Integer.parseInt(parts[2]) : 0));
        }
    }

    @Override
    public long extractTimestamp(Row row, long recordTimestamp) {
        Object value = row.getField(5);
        Object key = row.getField(4);
        Object ts = row.getField(3);
        if (!(value instanceof byte[])) {
            return Long.MIN_VALUE;
        }
        return eventTime((byte[]) value, key instanceof byte[] ? (byte[]) key : null,
                ts instanceof Long ? (Long) ts : -1L);
    }

    /**
     * The event_time of a single-object ClickEvent that passes the checks above, or
     * Long.MIN_VALUE.
     *
     * @param value the record value
     * @param key the record key, null when it has none
     * @param timestamp the record's Kafka timestamp, negative when it has none
     */
    public long eventTime(byte[] value, byte[] key, long timestamp) {
        if (value == null || value.length < HEADER + 4 || value.length > maxRecordBytes
                || (value[0] & 0xff) != 0xC3 || (value[1] & 0xff) != 0x01) {
            return Long.MIN_VALUE;
        }
        if (key == null || key.length > maxIdBytes) {
            return Long.MIN_VALUE;
        }
        Layout layout = layouts.get(littleEndian(value, 2));
        if (layout == null) {
            return Long.MIN_VALUE;
        }
        int[] pos = {HEADER};
        long eventTime;
        try {
            if (!validId(value, pos) || !validId(value, pos)) { // event_id, user_id
                return Long.MIN_VALUE;
            }
            long eventType = readLong(value, pos);
            if (eventType < 0 || eventType >= layout.eventTypes) {
                return Long.MIN_VALUE;
            }
            eventTime = readLong(value, pos);
            if (layout.sources > 0) {
                long source = readLong(value, pos);
                if (source < 0 || source >= layout.sources) {
                    return Long.MIN_VALUE;
                }
            }
        } catch (ArrayIndexOutOfBoundsException | IllegalArgumentException e) {
            return Long.MIN_VALUE;
        }
        if (eventTime < minEventTimeMs) {
            return Long.MIN_VALUE;
        }
        if (timestamp >= 0) {
            if (eventTime > timestamp + maxFutureSkewMs) {
                return Long.MIN_VALUE;
            }
            if (maxEventAgeMs > 0 && eventTime < timestamp - maxEventAgeMs) {
                return Long.MIN_VALUE;
            }
        }
        return eventTime;
    }

    /** Reads one id string at pos; true when it is 1..maxIdBytes of visible UTF-8 text. */
    private boolean validId(byte[] b, int[] pos) {
        long length = readLong(b, pos);
        if (length < 1 || length > maxIdBytes || pos[0] + length > b.length) {
            return false;
        }
        int start = pos[0];
        int end = start + (int) length;
        pos[0] = end;
        boolean visible = false;
        for (int i = start; i < end; i++) {
            int c = b[i] & 0xff;
            if (c >= 0x80) {
                return visibleUnicode(b, start, end - start);
            }
            if (c < 0x20 || c == 0x7f) {
                return false;
            }
            if (c != 0x20) {
                visible = true;
            }
        }
        return visible;
    }

    /** The non-ASCII case: strict UTF-8, no control character, something visible. */
    private static boolean visibleUnicode(byte[] b, int start, int length) {
        String text;
        try {
            text = StandardCharsets.UTF_8.newDecoder()
                    .onMalformedInput(CodingErrorAction.REPORT)
                    .onUnmappableCharacter(CodingErrorAction.REPORT)
                    .decode(ByteBuffer.wrap(b, start, length)).toString();
        } catch (CharacterCodingException e) {
            return false;
        }
        boolean visible = false;
        for (int i = 0; i < text.length(); ) {
            int cp = text.codePointAt(i);
            i += Character.charCount(cp);
            int type = Character.getType(cp);
            if (type == Character.CONTROL) {
                return false;
            }
            if (!(Character.isWhitespace(cp) || Character.isSpaceChar(cp)
                    || type == Character.FORMAT || type == Character.SURROGATE
                    || type == Character.PRIVATE_USE || type == Character.UNASSIGNED
                    || type == Character.NON_SPACING_MARK
                    || type == Character.ENCLOSING_MARK)) {
                visible = true;
            }
        }
        return visible;
    }

    private static long littleEndian(byte[] b, int offset) {
        long v = 0;
        for (int i = 7; i >= 0; i--) {
            v = (v << 8) | (b[offset + i] & 0xff);
        }
        return v;
    }

    /** Avro long: zig-zag varint. */
    static long readLong(byte[] b, int[] pos) {
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
