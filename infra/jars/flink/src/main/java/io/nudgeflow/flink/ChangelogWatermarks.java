package io.nudgeflow.flink;

import org.apache.flink.api.common.eventtime.Watermark;
import org.apache.flink.api.common.eventtime.WatermarkGenerator;
import org.apache.flink.api.common.eventtime.WatermarkGeneratorSupplier;
import org.apache.flink.api.common.eventtime.WatermarkOutput;
import org.apache.flink.api.common.eventtime.WatermarkStrategy;
import org.apache.flink.util.clock.RelativeClock;

/**
 * Watermarks of a changelog input (the user-metadata topic): its records' event time while it
 * reads its backlog; once it has been quiet for {@code quietMs}, idle for good.
 *
 * <p>Why not {@code forBoundedOutOfOrderness(0).withIdleness(quietMs)}: that input turns active
 * again with its next record, and a fresh record (updated_at at or after the job's watermark)
 * then holds the watermark at its own time until the input has been quiet for {@code quietMs}
 * again: every click of every user waits, up to {@code quietMs}, for one profile update. A
 * changelog's updates are sporadic by nature, so in a live job that stall recurs.
 *
 * <p>Here, while the job starts, the backlog still holds event time back (the first clicks see
 * the profiles written before them); after that its records only carry their timestamps, and the
 * clicks alone move event time. A record then applies at its updated_at once the clicks'
 * watermark passes it, or at once, at the user's current event time, if that is already later.
 *
 * <p>The quiet time counts from the first periodic check or the first record, not from the
 * generator's creation: Flink opens a chain from its tail, so this operator opens before the
 * Python decode in front of it has started its interpreter (seconds on a loaded machine), and
 * its first periodic check runs only once the whole task runs. Counted from creation, an
 * input whose start-up took longer than {@code quietMs} was idle before it could read a record,
 * and clicks could be applied before the profiles written before them.
 *
 * <p>A bounded replay passes a quiet time longer than the replay ({@code jobs.job.bounded_replay}):
 * the input then never goes idle, and this is exactly {@code forBoundedOutOfOrderness(0)}, which
 * keeps a replay decided by event time alone.
 *
 * @param <T> the records' type
 */
public final class ChangelogWatermarks<T> implements WatermarkStrategy<T> {

    private static final long serialVersionUID = 1L;

    private final long quietMs;

    /** @param quietMs the input counts as caught up once no record came for this long */
    public ChangelogWatermarks(long quietMs) {
        if (quietMs <= 0) {
            throw new IllegalArgumentException("ChangelogWatermarks: quietMs must be positive, got "
                    + quietMs);
        }
        this.quietMs = quietMs;
    }

    @Override
    public WatermarkGenerator<T> createWatermarkGenerator(
            WatermarkGeneratorSupplier.Context context) {
        return new Generator<>(quietMs, context.getInputActivityClock());
    }

    /**
     * The generator: the state machine ({@link #record}, {@link #periodic}) takes the time as an
     * argument, so it can be checked without Flink; the Flink methods pass the input-activity
     * clock, which stands still while the operator is back-pressured (a back-pressured input is
     * not quiet).
     *
     * @param <T> the records' type
     */
    public static final class Generator<T> implements WatermarkGenerator<T> {

        /** {@link #periodic}'s answer when nothing is to be emitted. */
        public static final long NONE = Long.MIN_VALUE;
        /** {@link #periodic}'s answer when the input has just caught up: mark it idle. */
        public static final long IDLE = Long.MAX_VALUE;

        private static final long UNSET = Long.MIN_VALUE;

        private final long quietMs;
        private final RelativeClock clock;
        private long maxTimestamp = Long.MIN_VALUE;
        /** When the last record came or, before any, the first check; UNSET before either. */
        private long lastRecordMs = UNSET;
        private boolean caughtUp;

        /**
         * @param quietMs caught up once no record came for this long
         * @param clock the input-activity clock; null when the caller passes the time itself
         */
        public Generator(long quietMs, RelativeClock clock) {
            this.quietMs = quietMs;
            this.clock = clock;
        }

        /** A record with event time {@code timestamp} arrived at {@code nowMs}. */
        public void record(long timestamp, long nowMs) {
            if (!caughtUp) {
                maxTimestamp = Math.max(maxTimestamp, timestamp);
                lastRecordMs = nowMs;
            }
        }

        /**
         * The periodic check at {@code nowMs}: the watermark to emit (the newest event time so far,
         * minus 1 ms, as {@code forBoundedOutOfOrderness(0)} does), {@link #IDLE} when the input has
         * been quiet for {@code quietMs} since its last record (or, before any, since the first
         * check), or {@link #NONE}.
         */
        public long periodic(long nowMs) {
            if (caughtUp) {
                return NONE;
            }
            if (lastRecordMs == UNSET) {
                lastRecordMs = nowMs;  // the first check: the task runs, the quiet time starts
            }
            if (nowMs - lastRecordMs >= quietMs) {
                caughtUp = true;
                return IDLE;
            }
            return maxTimestamp == Long.MIN_VALUE ? NONE : maxTimestamp - 1;
        }

        /** Whether the input has caught up (idle for good). */
        public boolean caughtUp() {
            return caughtUp;
        }

        @Override
        public void onEvent(T event, long eventTimestamp, WatermarkOutput output) {
            record(eventTimestamp, clock.relativeTimeMillis());
        }

        @Override
        public void onPeriodicEmit(WatermarkOutput output) {
            long next = periodic(clock.relativeTimeMillis());
            if (next == IDLE) {
                output.markIdle();
            } else if (next != NONE) {
                output.emitWatermark(new Watermark(next));
            }
        }
    }
}
