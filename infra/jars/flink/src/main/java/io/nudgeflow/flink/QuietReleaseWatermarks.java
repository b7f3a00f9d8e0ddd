package io.nudgeflow.flink;

import org.apache.flink.api.common.eventtime.Watermark;
import org.apache.flink.api.common.eventtime.WatermarkGenerator;
import org.apache.flink.api.common.eventtime.WatermarkGeneratorSupplier;
import org.apache.flink.api.common.eventtime.WatermarkOutput;
import org.apache.flink.api.common.eventtime.WatermarkStrategy;
import org.apache.flink.util.clock.RelativeClock;

/**
 * Watermarks of the clicks: bounded out-of-orderness, and a release when the input goes quiet.
 *
 * <p>While records come, the watermark is the newest event time minus the bound minus 1 ms, as
 * {@code forBoundedOutOfOrderness(bound)} gives. Once a split (Kafka partition) has had no
 * record for {@code quietMs} (the job's {@code quiet-release-ms}), its watermark moves to its
 * newest event time, and once every split of this source subtask has been quiet that long, to
 * the newest event time any of them has seen: every input waiting in the engine for the
 * watermark is applied, because no later click will come to move it. (The subtask's newest,
 * not each split's own: splits that went quiet together would otherwise hold each other at the
 * oldest of their newest times, and once they all go idle, Flink does not move a source's
 * combined watermark on. Across subtasks it does: when every input of the engine is idle, it
 * takes the highest watermark. Only when all are quiet: a quiet split among busy ones does not
 * jump ahead of its own clicks, so a late burst on it is not made late by the others.) The next record goes on from there (a watermark never moves back, so
 * until the newest event time passes that point again, nothing new is emitted; an input behind
 * it is applied at once, at the user's clock, as any input that arrives behind the watermark).
 *
 * <p>Why here and not in the engine: the engine used to set a processing-time timer per input
 * to release it, which cost a Python call per input ~3 s later, usually to find nothing left to
 * release: a third of the engine's time in a drain (issue 13). One check per watermark interval
 * in the source costs nothing, and it releases by event time, in time order.
 *
 * <p>Idleness is built in: a split without a record for {@code idleMs} (the job's {@code
 * idleness-ms}) is marked idle, so it stops holding the watermark back, and it releases first if
 * it has not yet ({@code withIdleness} around this strategy would mark a split idle before a
 * quiet time longer than the idleness could release it, and an idle split emits nothing).
 *
 * <p>Quiet means quiet on the input-activity clock, which stands still while the source is
 * back-pressured: a job busy with a backlog is not quiet. The check is per source split (Kafka
 * partition), like the watermark itself. {@code quietMs} 0 turns the release off (bounded
 * replays, what-if runs: event time alone).
 *
 * @param <T> the records' type
 */
public final class QuietReleaseWatermarks<T> implements WatermarkStrategy<T> {

    private static final long serialVersionUID = 1L;

    private final long boundMs;
    private final long quietMs;
    private final long idleMs;
    /**
     * Shared by the generators of this subtask's splits: the newest event time any of them has
     * seen, and when the last record came (input-activity clock).
     */
    private transient long[] subtask;

    /**
     * @param boundMs the out-of-orderness bound (max-out-of-orderness-ms), at least 0
     * @param quietMs release after this long without a record; 0: never
     * @param idleMs idle after this long without a record; 0: never
     */
    public QuietReleaseWatermarks(long boundMs, long quietMs, long idleMs) {
        if (boundMs < 0 || quietMs < 0 || idleMs < 0) {
            throw new IllegalArgumentException("QuietReleaseWatermarks: the bound, the quiet "
                    + "time and the idle time must be 0 or more, got " + boundMs + ", "
                    + quietMs + " and " + idleMs);
        }
        this.boundMs = boundMs;
        this.quietMs = quietMs;
        this.idleMs = idleMs;
    }

    @Override
    public WatermarkGenerator<T> createWatermarkGenerator(
            WatermarkGeneratorSupplier.Context context) {
        RelativeClock clock = context.getInputActivityClock();
        if (subtask == null) { // one strategy instance per source subtask, one generator per split
            subtask = new long[] {Long.MIN_VALUE, clock.relativeTimeMillis()};
        }
        return new Generator<>(boundMs, quietMs, idleMs, clock, subtask);
    }

    /**
     * The generator: {@link #record} and {@link #periodic} take the time as an argument, so the
     * rule can be checked without Flink; the Flink methods pass the input-activity clock.
     *
     * @param <T> the records' type
     */
    public static final class Generator<T> implements WatermarkGenerator<T> {

        /** {@link #periodic}'s answer when nothing is to be emitted. */
        public static final long NONE = Long.MIN_VALUE;

        private final long boundMs;
        private final long quietMs;
        private final long idleMs;
        private final RelativeClock clock;
        private final long[] subtask;
        private long maxTimestamp = Long.MIN_VALUE;
        private long lastRecordMs;
        private long emitted = Long.MIN_VALUE;

        /**
         * @param boundMs the out-of-orderness bound
         * @param quietMs release after this long without a record; 0: never
         * @param idleMs idle after this long without a record (and release first); 0: never
         * @param clock the input-activity clock; null when the caller passes the time itself
         * @param subtask shared by the generators of the subtask's splits: {the newest event
         *     time, the time of the last record}
         */
        public Generator(long boundMs, long quietMs, long idleMs, RelativeClock clock,
                         long[] subtask) {
            this.boundMs = boundMs;
            this.quietMs = quietMs;
            this.idleMs = idleMs;
            this.clock = clock;
            this.subtask = subtask;
            this.lastRecordMs = clock == null ? 0 : clock.relativeTimeMillis();
        }

        /** A record with event time {@code timestamp} arrived at {@code nowMs}. */
        public void record(long timestamp, long nowMs) {
            maxTimestamp = Math.max(maxTimestamp, timestamp);
            subtask[0] = Math.max(subtask[0], timestamp);
            subtask[1] = Math.max(subtask[1], nowMs);
            lastRecordMs = nowMs;
        }

        /**
         * The watermark at {@code nowMs}. Once this split has been quiet for {@code quietMs} (or
         * {@code idleMs}, if shorter): the newest event time of the subtask's splits if they
         * all have been, else this split's own newest. Before: this split's newest minus the
         * bound minus 1 ms. {@link #NONE} before any record.
         */
        public long periodic(long nowMs) {
            long release = quietMs > 0 && idleMs > 0 ? Math.min(quietMs, idleMs) : quietMs;
            if (release > 0 && nowMs - lastRecordMs >= release) {
                long upTo = nowMs - subtask[1] >= release
                        ? Math.max(maxTimestamp, subtask[0]) : maxTimestamp;
                return upTo == Long.MIN_VALUE ? NONE : upTo;
            }
            if (maxTimestamp == Long.MIN_VALUE) {
                return NONE;
            }
            return maxTimestamp - boundMs - 1;
        }

        @Override
        public void onEvent(T event, long eventTimestamp, WatermarkOutput output) {
            // a record the assigner refused (Long.MIN_VALUE) neither moves event time nor
            // counts as activity: it is dead-lettered downstream
            if (eventTimestamp != Long.MIN_VALUE) {
                record(eventTimestamp, clock.relativeTimeMillis());
            }
        }

        /** Whether the split is idle at {@code nowMs} (no record for {@code idleMs}). */
        public boolean idle(long nowMs) {
            return idleMs > 0 && nowMs - lastRecordMs >= idleMs;
        }

        @Override
        public void onPeriodicEmit(WatermarkOutput output) {
            long now = clock.relativeTimeMillis();
            long next = periodic(now);
            if (next != NONE && next > emitted) { // an emitted watermark makes the split active
                emitted = next;
                output.emitWatermark(new Watermark(next));
            }
            if (idle(now)) {
                output.markIdle();
            }
        }
    }
}
