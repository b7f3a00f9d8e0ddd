package io.nudgeflow.flink;

import java.io.ByteArrayOutputStream;
import java.io.DataOutputStream;
import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.Comparator;
import java.util.List;
import org.apache.flink.api.common.functions.OpenContext;
import org.apache.flink.api.common.state.ListState;
import org.apache.flink.api.common.state.ListStateDescriptor;
import org.apache.flink.api.common.state.ValueState;
import org.apache.flink.api.common.state.ValueStateDescriptor;
import org.apache.flink.api.common.typeinfo.TypeInformation;
import org.apache.flink.api.common.typeinfo.Types;
import org.apache.flink.metrics.Counter;
import org.apache.flink.streaming.api.TimeDomain;
import org.apache.flink.streaming.api.TimerService;
import org.apache.flink.streaming.api.functions.KeyedProcessFunction;
import org.apache.flink.types.Row;
import org.apache.flink.util.Collector;

/**
 * Holds each user's engine inputs until the watermark passes them, then hands them on together,
 * in event-time order.
 *
 * <p><b>Why.</b> The Python engine used to buffer every input in the user's clock state and apply
 * it at a later timer step: an arrival step per input (a state read, a state write and a timer
 * call through the JVM boundary) before the timer step that applied them. Here the waiting
 * costs a Java state write, and the engine applies a user's inputs in the one step that
 * receives them (issue 13, "Throughput"). What the engine computes does not change: the inputs
 * handed on at watermark W are the user's at or before W, every earlier one was handed on
 * before them, and every later one is after W or behind the watermark (late, as before). The
 * engine puts inputs of the same time in its own order (udfs/clock.py, {@code Pending.order}),
 * so the order within a row is only event time, then arrival.
 *
 * <p>Input and output: Row(key, engine input row) of {@code KeyByUser}, keyed by Row(key); the
 * engine input row is ENGINE_INPUT_ROW (udfs/flink/descriptors.py). Clicks (their event time is
 * the record's timestamp, set by the source's {@code ClickEventTimeAssigner}; a waiting click
 * keeps it in its row's event_time, unset until then), metadata and outcomes (field 2) later
 * than the watermark wait in keyed state; the rest (erasures and backfills, which the engine
 * applies at once by design, inputs at or behind the watermark, and clicks without a valid
 * event time, which the engine dead-letters) pass at once. A user's waiting inputs are handed
 * on, as one row of kind {@code batch} ({@link #batch}), when the watermark reaches the earliest
 * (one event-time timer per user), or all of them {@code quietReleaseMs} of processing time
 * after the first began to wait (the stream went quiet and no click moves the watermark; 0:
 * never), as the engine's own quiet release did.
 *
 * <p>Duplicates are handed on as they came: the engine counts and drops them.
 */
public final class ReleaseInEventTimeOrder extends KeyedProcessFunction<Row, Row, Row> {

    private static final long serialVersionUID = 2L;
    /** The kinds of the inputs an erasure found waiting (udfs/flink/user_engine.py drops them). */
    static final String ERASED_CLICK = "erased-click";
    static final String ERASED_INPUT = "erased-input";
    /** The kind of the row that hands on a user's inputs at once ({@link #batch}). */
    static final String BATCH = "batch";
    /** Event time, then arrival (a stable sort): the engine orders equal times itself. */
    private static final Comparator<Row> BY_TIME = Comparator.comparingLong(
            element -> (Long) input(element).getField(2));

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
        Row input = input(element);
        Object kind = input.getField(0);
        TimerService timers = ctx.timerService();
        if ("erase".equals(kind)) {
            erase(element, timers, out);
            return;
        }
        long time = Long.MIN_VALUE;
        if ("click".equals(kind)) {
            Long timestamp = ctx.timestamp();
            time = timestamp == null ? Long.MIN_VALUE : timestamp;
        } else if ("metadata".equals(kind) || "outcome".equals(kind)) {
            Object field = input.getField(2);
            time = field instanceof Long ? (Long) field : Long.MIN_VALUE;
        }
        if (time == Long.MIN_VALUE || time <= timers.currentWatermark()) {
            out.collect(element);
            return;
        }
        input.setField(2, time); // a click's row carries its event time while it waits
        waiting.add(element);
        Long wake = wakeAt.value();
        if (wake == null || time < wake) {
            wakeAt(timers, wake, time);
        }
        armQuietRelease(timers);
    }

    @Override
    public void onTimer(long timestamp, OnTimerContext ctx, Collector<Row> out) throws Exception {
        TimerService timers = ctx.timerService();
        boolean quiet = ctx.timeDomain() == TimeDomain.PROCESSING_TIME;
        if (quiet) {
            Long due = quietAt.value();
            if (due == null || due != timestamp) {
                return; // a timer of inputs handed on since
            }
            quietAt.clear();
            quietReleases.inc();
        }
        long upTo = quiet ? Long.MAX_VALUE : Math.max(timestamp, timers.currentWatermark());
        List<Row> ready = new ArrayList<>();
        List<Row> left = new ArrayList<>();
        long nextWake = Long.MAX_VALUE;
        Iterable<Row> all = waiting.get();
        if (all != null) {
            for (Row element : all) {
                long time = (Long) input(element).getField(2);
                if (time <= upTo) {
                    ready.add(element);
                } else {
                    left.add(element);
                    nextWake = Math.min(nextWake, time);
                }
            }
        }
        if (!ready.isEmpty()) {
            ready.sort(BY_TIME);
            long newest = (Long) input(ready.get(ready.size() - 1)).getField(2);
            out.collect(batch(ready, quiet ? newest : upTo));
        }
        if (left.isEmpty()) {
            forget(timers);
            return;
        }
        waiting.update(left);
        Long wake = wakeAt.value();
        if (wake == null || wake != nextWake) {
            wakeAt(timers, wake, nextWake);
        }
        armQuietRelease(timers);
    }

    /**
     * An erasure goes on at once (the engine applies it when it arrives), and the user's waiting
     * inputs after it, marked: the engine drops and counts them, as it dropped the inputs waiting
     * in its own state at an erasure. Unmarked, a waiting metadata record would reach the engine
     * after the erasure as a re-registration.
     */
    private void erase(Row element, TimerService timers, Collector<Row> out) throws Exception {
        out.collect(element);
        Iterable<Row> all = waiting.get();
        if (all != null) {
            for (Row waitingElement : all) {
                Row input = Row.copy(input(waitingElement));
                input.setField(0, "click".equals(input.getField(0)) ? ERASED_CLICK : ERASED_INPUT);
                out.collect(Row.of(waitingElement.getField(0), input));
            }
        }
        forget(timers);
    }

    /** Moves the user's one event-time timer from {@code wake} (if any, not fired yet) to time. */
    private void wakeAt(TimerService timers, Long wake, long time) throws IOException {
        if (wake != null && wake > timers.currentWatermark()) {
            timers.deleteEventTimeTimer(wake);
        }
        timers.registerEventTimeTimer(time);
        wakeAt.update(time);
    }

    /** A processing-time timer for the quiet release, unless one is on the way (or it is off). */
    private void armQuietRelease(TimerService timers) throws IOException {
        if (quietReleaseMs > 0 && quietAt.value() == null) {
            long due = timers.currentProcessingTime() + quietReleaseMs;
            timers.registerProcessingTimeTimer(due);
            quietAt.update(due);
        }
    }

    /** Nothing waits any more: the state goes, and the timers not fired yet. */
    private void forget(TimerService timers) throws IOException {
        waiting.clear();
        Long wake = wakeAt.value();
        if (wake != null && wake > timers.currentWatermark()) {
            timers.deleteEventTimeTimer(wake);
        }
        wakeAt.clear();
        Long due = quietAt.value();
        if (due != null) {
            timers.deleteProcessingTimeTimer(due);
            quietAt.clear();
        }
    }

    private static Row input(Row element) {
        return (Row) element.getField(1);
    }

    /**
     * The user's inputs handed on at once, as one row of kind {@code batch}: Row(key,
     * Row("batch", user_id, through, null, inputs, null, null, null, null)), where {@code through}
     * is the event time up to which the engine applies everything of the user (the watermark;
     * for a quiet release the newest input's time) and {@code inputs} the rows in order, each as
     * (big-endian): kind (1 byte: 0 metadata, 1 click, 2 outcome), event_time, ingest_time (8
     * bytes each; Long.MIN_VALUE for none), partition (4), offset (8; -1 for none), then key,
     * payload and traceparent (UTF-8) each as a 4-byte length (-1 for none) and its bytes
     * (udfs/flink/descriptors.py reads it: {@code read_batch}). One row, so the engine loads and
     * stores the user's state once for all of them, as its timer step did.
     */
    static Row batch(List<Row> ready, long through) throws IOException {
        ByteArrayOutputStream bytes = new ByteArrayOutputStream();
        DataOutputStream data = new DataOutputStream(bytes);
        for (Row element : ready) {
            Row input = input(element);
            Object kind = input.getField(0);
            data.writeByte("metadata".equals(kind) ? 0 : "click".equals(kind) ? 1 : 2);
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
        Row first = ready.get(0);
        return Row.of(first.getField(0), Row.of(BATCH, input(first).getField(1), through,
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
}
