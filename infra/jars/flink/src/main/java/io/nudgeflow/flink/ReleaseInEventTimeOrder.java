package io.nudgeflow.flink;

import java.io.ByteArrayOutputStream;
import java.io.DataOutputStream;
import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.Comparator;
import java.util.List;
import org.apache.flink.api.common.state.ListState;
import org.apache.flink.api.common.state.ListStateDescriptor;
import org.apache.flink.api.common.state.ValueState;
import org.apache.flink.api.common.state.ValueStateDescriptor;
import org.apache.flink.api.common.typeinfo.TypeInformation;
import org.apache.flink.api.common.typeinfo.Types;
import org.apache.flink.api.common.functions.OpenContext;
import org.apache.flink.metrics.Counter;
import org.apache.flink.streaming.api.TimeDomain;
import org.apache.flink.streaming.api.functions.KeyedProcessFunction;
import org.apache.flink.types.Row;
import org.apache.flink.util.Collector;

/**
 * Holds each user's engine inputs until the watermark passes them, then hands them on in the
 * order the engine applies them: event time, then metadata before clicks before outcomes, then
 * the input's id (udfs/clock.py, {@code Pending.order}).
 *
 * <p><b>Why.</b> The Python engine used to buffer every input in the user's clock state and apply
 * it at a later timer step: an arrival step per input (a state read, a state write and a timer
 * call through the JVM boundary) before the timer step that applied them. Here the waiting
 * costs a Java state write, and the engine applies a user's inputs in the one step that
 * receives them (issue 13, "Throughput"). What the engine computes does not change: the inputs
 * handed on at watermark W are the user's at or before W, every earlier one was handed on
 * before them, and every later one is after W or behind the watermark (late, as before).
 *
 * <p>Output: the rows that pass at once (below) as they came, and at each release one row of
 * kind {@code batch} per user holding their inputs in the engine's order ({@link #batch}).
 *
 * <p>Input and output: Row(key, engine input row) of {@code KeyByUser}, keyed by Row(key); the
 * engine input row is ENGINE_INPUT_ROW (udfs/flink/descriptors.py). Clicks (their event time is
 * the record's timestamp, set by the source's {@code ClickEventTimeAssigner}), metadata and
 * outcomes (field 2) later than the watermark wait in keyed state; the rest (erasures and
 * backfills, which the engine applies at once by design, inputs at or behind the watermark, and
 * clicks without a valid event time, which the engine dead-letters) pass at once. A user's waiting
 * inputs are handed on when the watermark reaches the earliest (one event-time timer per user),
 * or all of them {@code quietReleaseMs} of processing time after the first began to wait (the
 * stream went quiet and no click moves the watermark; 0: never), as the engine's own quiet
 * release did.
 *
 * <p>Duplicates are handed on as they came (next to each other, in the order above): the engine
 * counts and drops them when it applies them, as it did for duplicates of inputs already applied.
 */
public final class ReleaseInEventTimeOrder extends KeyedProcessFunction<Row, Row, Row> {

    private static final long serialVersionUID = 1L;
    private static final int HEADER = 10; // single-object marker (2) + fingerprint (8)
    static final int METADATA_RANK = 0;
    static final int CLICK_RANK = 1;
    static final int OUTCOME_RANK = 2;
    /** The kinds of the inputs an erasure found waiting (udfs/flink/user_engine.py drops them). */
    static final String ERASED_CLICK = "erased-click";
    static final String ERASED_INPUT = "erased-input";
    /** The kind of the row that hands on a user's inputs at once ({@link #batch}). */
    static final String BATCH = "batch";

    private final TypeInformation<Row> rowType;
    private final long quietReleaseMs;
    private transient ListState<Row> waiting;
    private transient ValueState<Long> wakeAt;
    private transient ValueState<Long> quietAt;
    /** Users whose waiting inputs went on by processing time (the engine's metric of the name). */
    private transient Counter quietReleases;

    /**
     * @param rowType the type of the Row(key, engine input row) elements (their state serializer)
     * @param quietReleaseMs processing time after which waiting inputs go on anyway (0: never)
     */
    public ReleaseInEventTimeOrder(TypeInformation<Row> rowType, long quietReleaseMs) {
        this.rowType = rowType;
        this.quietReleaseMs = quietReleaseMs;
    }

    @Override
    public void open(OpenContext context) {
        waiting = getRuntimeContext().getListState(new ListStateDescriptor<>("waiting", rowType));
        wakeAt = getRuntimeContext().getState(new ValueStateDescriptor<>("wake-at", Types.LONG));
        quietAt = getRuntimeContext().getState(new ValueStateDescriptor<>("quiet-at", Types.LONG));
        quietReleases = getRuntimeContext().getMetricGroup().counter("quiet_releases");
    }

    @Override
    public void processElement(Row element, Context ctx, Collector<Row> out) throws Exception {
        if ("erase".equals(((Row) element.getField(1)).getField(0))) {
            erase(element, ctx, out);
            return;
        }
        long time = eventTime(element, ctx.timestamp());
        if (time == Long.MIN_VALUE || time <= ctx.timerService().currentWatermark()) {
            out.collect(element);
            return;
        }
        waiting.add(element);
        Long wake = wakeAt.value();
        if (wake == null || time < wake) {
            if (wake != null) {
                ctx.timerService().deleteEventTimeTimer(wake);
            }
            ctx.timerService().registerEventTimeTimer(time);
            wakeAt.update(time);
        }
        if (quietReleaseMs > 0 && quietAt.value() == null) {
            long due = ctx.timerService().currentProcessingTime() + quietReleaseMs;
            ctx.timerService().registerProcessingTimeTimer(due);
            quietAt.update(due);
        }
    }

    @Override
    public void onTimer(long timestamp, OnTimerContext ctx, Collector<Row> out) throws Exception {
        boolean quiet = ctx.timeDomain() == TimeDomain.PROCESSING_TIME;
        if (quiet) {
            Long due = quietAt.value();
            if (due == null || due != timestamp) {
                return; // a timer of inputs handed on since
            }
            quietAt.clear();
            quietReleases.inc();
        }
        long upTo = quiet ? Long.MAX_VALUE
                : Math.max(timestamp, ctx.timerService().currentWatermark());
        List<Entry> ready = new ArrayList<>();
        List<Row> left = new ArrayList<>();
        long nextWake = Long.MAX_VALUE;
        Iterable<Row> all = waiting.get();
        if (all != null) {
            for (Row element : all) {
                Entry entry = new Entry(element, eventTime(element, null));
                if (entry.time <= upTo) {
                    ready.add(entry);
                } else {
                    left.add(element);
                    nextWake = Math.min(nextWake, entry.time);
                }
            }
        }
        if (!ready.isEmpty()) {
            ready.sort(ORDER);
            long through = quiet ? ready.get(ready.size() - 1).time : upTo;
            out.collect(batch(ready, through));
        }
        Long wake = wakeAt.value();
        if (left.isEmpty()) {
            waiting.clear();
            wakeAt.clear();
            if (wake != null && wake > upTo) {
                ctx.timerService().deleteEventTimeTimer(wake);
            }
            Long due = quietAt.value();
            if (due != null) {
                ctx.timerService().deleteProcessingTimeTimer(due);
                quietAt.clear();
            }
            return;
        }
        waiting.update(left);
        if (wake == null || wake != nextWake) {
            if (wake != null && wake > upTo) {
                ctx.timerService().deleteEventTimeTimer(wake);
            }
            ctx.timerService().registerEventTimeTimer(nextWake);
            wakeAt.update(nextWake);
        }
        if (quietReleaseMs > 0 && quietAt.value() == null) {
            long due = ctx.timerService().currentProcessingTime() + quietReleaseMs;
            ctx.timerService().registerProcessingTimeTimer(due);
            quietAt.update(due);
        }
    }

    /**
     * An erasure goes on at once (the engine applies it when it arrives), and the user's waiting
     * inputs after it, marked: the engine drops and counts them, as it dropped the inputs waiting
     * in its own state at an erasure. Unmarked, a waiting metadata record would reach the engine
     * after the erasure as a re-registration.
     */
    private void erase(Row element, Context ctx, Collector<Row> out) throws Exception {
        out.collect(element);
        Iterable<Row> all = waiting.get();
        if (all != null) {
            for (Row waitingElement : all) {
                Row input = Row.copy((Row) waitingElement.getField(1));
                input.setField(0, "click".equals(input.getField(0)) ? ERASED_CLICK : ERASED_INPUT);
                out.collect(Row.of(waitingElement.getField(0), input));
            }
        }
        waiting.clear();
        Long wake = wakeAt.value();
        if (wake != null) {
            ctx.timerService().deleteEventTimeTimer(wake);
            wakeAt.clear();
        }
        Long due = quietAt.value();
        if (due != null) {
            ctx.timerService().deleteProcessingTimeTimer(due);
            quietAt.clear();
        }
    }

    /**
     * The user's inputs handed on at once, as one row of kind {@code batch}: Row(key,
     * Row("batch", user_id, through, null, inputs, null, null, null, null)), where {@code through}
     * is the event time up to which the engine applies everything of the user (the watermark;
     * for a quiet release the newest input's time) and {@code inputs} the rows in order, each as
     * (big-endian): kind (1 byte: 0 metadata, 1 click, 2 outcome), event_time, ingest_time (8
     * bytes each; Long.MIN_VALUE for none), partition (4), offset (8; -1 for none), then key,
     * payload and traceparent (UTF-8) each as a 4-byte length (-1 for none) and its bytes
     * (udfs/flink/user_engine.py reads it: {@code read_batch}). One row, so the engine loads and
     * stores the user's state once for all of them, as its timer step did.
     */
    static Row batch(List<Entry> ready, long through) throws IOException {
        ByteArrayOutputStream bytes = new ByteArrayOutputStream();
        DataOutputStream data = new DataOutputStream(bytes);
        Row first = null;
        for (Entry entry : ready) {
            Row input = (Row) entry.element.getField(1);
            if (first == null) {
                first = input;
            }
            data.writeByte(entry.rank);
            data.writeLong(orNone((Long) input.getField(2)));
            data.writeLong(orNone((Long) input.getField(3)));
            Object partition = input.getField(5);
            data.writeInt(partition instanceof Integer ? (Integer) partition : -1);
            Object offset = input.getField(6);
            data.writeLong(offset instanceof Long ? (Long) offset : -1L);
            writeBytes(data, (byte[]) input.getField(7));
            writeBytes(data, (byte[]) input.getField(4));
            Object trace = input.getField(8);
            writeBytes(data, trace == null ? null
                    : trace.toString().getBytes(StandardCharsets.UTF_8));
        }
        data.flush();
        return Row.of(ready.get(0).element.getField(0), Row.of(BATCH, first.getField(1), through,
                null, bytes.toByteArray(), null, null, null, null));
    }

    private static long orNone(Long value) {
        return value == null ? Long.MIN_VALUE : value;
    }

    private static void writeBytes(DataOutputStream data, byte[] value) throws IOException {
        if (value == null) {
            data.writeInt(-1);
            return;
        }
        data.writeInt(value.length);
        data.write(value);
    }

    /**
     * The event time an input waits for, or Long.MIN_VALUE when it does not wait: an erasure, a
     * backfill, a click without a valid event time (the source's assigner gave it
     * Long.MIN_VALUE; the engine dead-letters it).
     *
     * @param element Row(key, engine input row)
     * @param timestamp the record's timestamp when known (a click's event time), else null
     */
    static long eventTime(Row element, Long timestamp) {
        Row input = (Row) element.getField(1);
        Object kind = input.getField(0);
        if ("click".equals(kind)) {
            if (timestamp != null) {
                return timestamp;
            }
            return clickTime(input.getField(4));
        }
        if ("metadata".equals(kind) || "outcome".equals(kind)) {
            Object time = input.getField(2);
            return time instanceof Long ? (Long) time : Long.MIN_VALUE;
        }
        return Long.MIN_VALUE;
    }

    /** A waiting click's event time, read again from its bytes (it passed the source's checks). */
    private static long clickTime(Object value) {
        if (!(value instanceof byte[])) {
            return Long.MIN_VALUE;
        }
        byte[] bytes = (byte[]) value;
        try {
            int[] pos = {HEADER};
            skipString(bytes, pos); // event_id
            skipString(bytes, pos); // user_id
            ClickEventTimeAssigner.readLong(bytes, pos); // event_type
            return ClickEventTimeAssigner.readLong(bytes, pos);
        } catch (ArrayIndexOutOfBoundsException | IllegalArgumentException e) {
            return Long.MIN_VALUE;
        }
    }

    private static void skipString(byte[] bytes, int[] pos) {
        long length = ClickEventTimeAssigner.readLong(bytes, pos);
        if (length < 0 || pos[0] + length > bytes.length) {
            throw new IllegalArgumentException("bad string length");
        }
        pos[0] += (int) length;
    }

    /**
     * An input's rank and tie-break key as the engine orders them: metadata by its time (the
     * engine's key is {@code metadata@<time>}), clicks by event_id and outcomes by outcome_id
     * (each the first field of its single-object bytes), compared as UTF-8 bytes, which is the
     * order of Python's string comparison (by code point).
     */
    static final class Entry {
        final Row element;
        final long time;
        final int rank;
        final byte[] key;

        Entry(Row element, long time) {
            this.element = element;
            this.time = time;
            Row input = (Row) element.getField(1);
            Object kind = input.getField(0);
            if ("metadata".equals(kind)) {
                rank = METADATA_RANK;
                key = new byte[0]; // one per time: the same key for every copy
            } else {
                rank = "click".equals(kind) ? CLICK_RANK : OUTCOME_RANK;
                key = firstString(input.getField(4));
            }
        }

        private static byte[] firstString(Object value) {
            if (!(value instanceof byte[])) {
                return new byte[0];
            }
            byte[] bytes = (byte[]) value;
            try {
                int[] pos = {HEADER};
                long length = ClickEventTimeAssigner.readLong(bytes, pos);
                if (length < 0 || pos[0] + length > bytes.length) {
                    return new byte[0];
                }
                return Arrays.copyOfRange(bytes, pos[0], pos[0] + (int) length);
            } catch (ArrayIndexOutOfBoundsException | IllegalArgumentException e) {
                return new byte[0];
            }
        }
    }

    static final Comparator<Entry> ORDER = Comparator.<Entry>comparingLong(e -> e.time)
            .thenComparingInt(e -> e.rank)
            .thenComparing((a, b) -> Arrays.compareUnsigned(a.key, b.key));
}
