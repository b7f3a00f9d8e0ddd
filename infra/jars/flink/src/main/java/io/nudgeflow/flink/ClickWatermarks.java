package io.nudgeflow.flink;

import org.apache.flink.api.common.eventtime.Watermark;
import org.apache.flink.api.common.eventtime.WatermarkGenerator;
import org.apache.flink.api.common.eventtime.WatermarkGeneratorSupplier;
import org.apache.flink.api.common.eventtime.WatermarkOutput;
import org.apache.flink.api.common.eventtime.WatermarkStrategy;
import org.apache.flink.types.Row;

/**
 * Watermarks of the clicks source: bounded out-of-orderness on each partition's own event time,
 * as {@code forBoundedOutOfOrderness(bound)} emits them, but paced by how far behind the input
 * is: while live, at every auto-watermark interval; while catching up, at most every {@code
 * catchUpIntervalMs}.
 *
 * <p><b>Why.</b> A watermark hands on every user input it passes ({@code ReleaseInEventTimeOrder})
 * and the engine applies a user's inputs in the one step that receives them. Live, a watermark
 * every few milliseconds is what keeps a click's wait near the out-of-orderness bound. Reading a
 * backlog, event time runs minutes ahead per second of reading, and a watermark every 10 ms
 * hands a user's clicks on one by one where one every 200 ms handed a session's clicks on
 * together: a drain of 300,000 backlog clicks ran 13% slower (docs/performance.md). Nobody
 * waits on a backlog's triggers by the millisecond, so catching up the watermarks come as
 * seldom as before; live, as often as asked.
 *
 * <p><b>Live or catching up</b> is read from the newest Kafka timestamp of the partition's
 * records (the broker's append time on the clicks topic): catching up while it is more than
 * {@code catchUpLagMs} behind the wall clock. A job that falls that far behind live traffic
 * paces its watermarks too, and its steps batch again while it catches up.
 *
 * <p><b>Nothing the engine computes changes</b>: every watermark emitted is one that {@code
 * forBoundedOutOfOrderness} would have emitted at some tick; only some of them are skipped, so
 * inputs are handed on later, never in another order, and none becomes late (lateness is read
 * against the watermark, which is then lower). A record the timestamp assigner rejected ({@code
 * Long.MIN_VALUE}, see {@link ClickEventTimeAssigner}) moves neither the watermark nor the pacing.
 *
 * <p>Input: Row(topic, partition, offset, timestamp, key, value, ...) of {@link
 * KafkaRecordWithMetadataDeserializer}; the timestamp is field 3 (null or negative: unknown,
 * read as live).
 */
public final class ClickWatermarks implements WatermarkStrategy<Row> {

    private static final long serialVersionUID = 1L;

    private final long boundMs;
    private final long catchUpLagMs;
    private final long catchUpIntervalMs;

    /**
     * @param boundMs the out-of-orderness bound: watermarks trail the newest event time by this
     * @param catchUpLagMs the input is catching up while its newest append time is more than
     *     this behind the wall clock
     * @param catchUpIntervalMs and then a watermark is emitted at most this often (0: at every
     *     auto-watermark interval, never paced)
     */
    public ClickWatermarks(long boundMs, long catchUpLagMs, long catchUpIntervalMs) {
        if (boundMs < 0 || catchUpLagMs < 0 || catchUpIntervalMs < 0) {
            throw new IllegalArgumentException("ClickWatermarks: boundMs, catchUpLagMs and "
                    + "catchUpIntervalMs must be >= 0, got " + boundMs + ", " + catchUpLagMs
                    + " and " + catchUpIntervalMs);
        }
        this.boundMs = boundMs;
        this.catchUpLagMs = catchUpLagMs;
        this.catchUpIntervalMs = catchUpIntervalMs;
    }

    @Override
    public WatermarkGenerator<Row> createWatermarkGenerator(
            WatermarkGeneratorSupplier.Context context) {
        return new Generator(boundMs, catchUpLagMs, catchUpIntervalMs);
    }

    /**
     * The generator: the state machine ({@link #record}, {@link #periodic}) takes the wall-clock
     * time as an argument, so it can be checked without Flink; the Flink methods pass {@code
     * System.currentTimeMillis()} (the append times are wall-clock times too).
     */
    public static final class Generator implements WatermarkGenerator<Row> {

        /** {@link #periodic}'s answer when nothing is to be emitted. */
        public static final long NONE = Long.MIN_VALUE;
        private static final long UNSET = Long.MIN_VALUE;

        private final long boundMs;
        private final long catchUpLagMs;
        private final long catchUpIntervalMs;
        private long maxTimestamp = Long.MIN_VALUE;
        /** The newest append time of the records so far; UNSET before any with one. */
        private long newestAppendMs = UNSET;
        /** When the last watermark was emitted; UNSET before the first. */
        private long lastEmitMs = UNSET;

        /**
         * @param boundMs the out-of-orderness bound
         * @param catchUpLagMs catching up while the newest append time is more than this behind
         * @param catchUpIntervalMs then a watermark at most this often (0: never paced)
         */
        public Generator(long boundMs, long catchUpLagMs, long catchUpIntervalMs) {
            this.boundMs = boundMs;
            this.catchUpLagMs = catchUpLagMs;
            this.catchUpIntervalMs = catchUpIntervalMs;
        }

        /** A record with event time {@code timestamp} and Kafka append time {@code appendMs}. */
        public void record(long timestamp, long appendMs) {
            if (timestamp == Long.MIN_VALUE) {
                return;  // rejected by the assigner: moves nothing
            }
            maxTimestamp = Math.max(maxTimestamp, timestamp);
            if (appendMs >= 0) {
                newestAppendMs = Math.max(newestAppendMs, appendMs);
            }
        }

        /** Whether the input is catching up at {@code nowMs}. */
        public boolean catchingUp(long nowMs) {
            return newestAppendMs != UNSET && nowMs - newestAppendMs > catchUpLagMs;
        }

        /**
         * The periodic check at wall-clock time {@code nowMs}: the watermark to emit (the newest
         * event time minus the bound minus 1 ms, as {@code forBoundedOutOfOrderness} does), or
         * {@link #NONE}: before any record, and while catching up when the last watermark left
         * less than {@code catchUpIntervalMs} ago.
         */
        public long periodic(long nowMs) {
            if (maxTimestamp == Long.MIN_VALUE) {
                return NONE;
            }
            if (catchUpIntervalMs > 0 && lastEmitMs != UNSET && catchingUp(nowMs)
                    && nowMs - lastEmitMs < catchUpIntervalMs) {
                return NONE;
            }
            lastEmitMs = nowMs;
            return maxTimestamp - boundMs - 1;
        }

        @Override
        public void onEvent(Row event, long eventTimestamp, WatermarkOutput output) {
            Object appended = event.getField(3);
            record(eventTimestamp, appended instanceof Long ? (Long) appended : -1L);
        }

        @Override
        public void onPeriodicEmit(WatermarkOutput output) {
            long next = periodic(System.currentTimeMillis());
            if (next != NONE) {
                output.emitWatermark(new Watermark(next));
            }
        }
    }
}
