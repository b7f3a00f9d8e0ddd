package io.nudgeflow.flink;

import org.apache.flink.api.common.eventtime.Watermark;
import org.apache.flink.api.common.eventtime.WatermarkGenerator;
import org.apache.flink.api.common.eventtime.WatermarkGeneratorSupplier;
import org.apache.flink.api.common.eventtime.WatermarkOutput;
import org.apache.flink.api.common.eventtime.WatermarkStrategy;
import org.apache.flink.util.clock.RelativeClock;

import java.util.ArrayList;
import java.util.List;

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
 * jump ahead of its own clicks, so a late burst on it is not made late by the others.)
 *
 * <p>The next record goes on from there (a watermark never moves back, so until the newest
 * event time passes that point again, nothing new is emitted; an input behind it is applied at
 * once, at the user's clock, as any input that arrives behind the watermark).
 *
 * <p>Why here and not in the engine: the engine used to set a processing-time timer per input
 * to release it, which cost a Python call per input ~3 s later, usually to find nothing left to
 * release: a third of the engine's time in a drain (issue 13). One check per watermark interval
 * in the source costs nothing, and it releases by event time, in time order.
 *
 * <p>Idleness comes from {@code withIdleness} around this strategy, with a timeout longer than
 * the quiet time (jobs/connectors.py): a split marked idle emits nothing, so it must release
 * first.
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
    /** The newest event time any split of this subtask has seen (its generators share it). */
    private transient long[] newest;
    /** The generators of this subtask's splits (each says whether its split is quiet). */
    private transient List<Generator<T>> splits;

    /**
     * @param boundMs the out-of-orderness bound (max-out-of-orderness-ms), at least 0
     * @param quietMs release after this long without a record; 0: never
     */
    public QuietReleaseWatermarks(long boundMs, long quietMs) {
        if (boundMs < 0 || quietMs < 0) {
            throw new IllegalArgumentException("QuietReleaseWatermarks: the bound and the quiet "
                    + "time must be 0 or more, got " + boundMs + " and " + quietMs);
        }
        this.boundMs = boundMs;
        this.quietMs = quietMs;
    }

    @Override
    public WatermarkGenerator<T> createWatermarkGenerator(
            WatermarkGeneratorSupplier.Context context) {
        if (splits == null) { // one strategy instance per source subtask, one generator per split
            newest = new long[] {Long.MIN_VALUE};
            splits = new ArrayList<>();
        }
        return new Generator<>(boundMs, quietMs, context.getInputActivityClock(), newest, splits);
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
        private final RelativeClock clock;
        private final long[] newest;
        private final List<Generator<T>> splits;
        private boolean quiet;
        private long maxTimestamp = Long.MIN_VALUE;
        private long lastRecordMs;

        /**
         * @param boundMs the out-of-orderness bound
         * @param quietMs release after this long without a record; 0: never
         * @param clock the input-activity clock; null when the caller passes the time itself
         * @param newest the newest event time of the subtask's splits (one element, shared)
         * @param splits the generators of the subtask's splits (shared; this one joins it)
         */
        public Generator(long boundMs, long quietMs, RelativeClock clock, long[] newest,
                         List<Generator<T>> splits) {
            this.boundMs = boundMs;
            this.quietMs = quietMs;
            this.clock = clock;
            this.newest = newest;
            this.splits = splits;
            splits.add(this);
            this.lastRecordMs = clock == null ? 0 : clock.relativeTimeMillis();
        }

        /** A record with event time {@code timestamp} arrived at {@code nowMs}. */
        public void record(long timestamp, long nowMs) {
            maxTimestamp = Math.max(maxTimestamp, timestamp);
            newest[0] = Math.max(newest[0], timestamp);
            lastRecordMs = nowMs;
            quiet = false;
        }

        /**
         * The watermark at {@code nowMs}. Once this split has been quiet for {@code quietMs}:
         * the newest event time of the subtask's splits if they all have been, else this
         * split's own newest (each split's own check, on its own activity clock, says whether it
         * is quiet). Before: this split's newest minus the bound minus 1 ms. {@link #NONE}
         * before any record.
         */
        public long periodic(long nowMs) {
            quiet = quietMs > 0 && nowMs - lastRecordMs >= quietMs;
            if (quiet) {
                boolean allQuiet = true;
                for (Generator<T> split : splits) {
                    allQuiet &= split.quiet;
                }
                long upTo = allQuiet ? Math.max(maxTimestamp, newest[0]) : maxTimestamp;
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

        @Override
        public void onPeriodicEmit(WatermarkOutput output) {
            long next = periodic(clock.relativeTimeMillis());
            if (next != NONE) {
                output.emitWatermark(new Watermark(next));
            }
        }
    }
}
