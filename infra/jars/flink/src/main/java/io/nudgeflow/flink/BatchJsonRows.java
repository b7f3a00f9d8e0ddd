package io.nudgeflow.flink;

import java.io.ByteArrayOutputStream;
import java.util.concurrent.ScheduledFuture;
import org.apache.flink.streaming.api.operators.AbstractStreamOperator;
import org.apache.flink.streaming.api.operators.BoundedOneInput;
import org.apache.flink.streaming.api.operators.OneInputStreamOperator;
import org.apache.flink.streaming.api.watermark.Watermark;
import org.apache.flink.streaming.runtime.streamrecord.StreamRecord;
import org.apache.flink.types.Row;

/**
 * Collects routed rows, Row(topic, key, value, traceparent) whose values are JSON, into one row
 * whose value is the JSON array of those values, in arrival order: the Python operator behind it
 * is then called once per batch instead of once per row.
 *
 * <p>Why: every call into a Python operator of a TaskManager wakes a thread that must take the
 * interpreter's lock from the engine's thread, and the engine then waits (up to the switch
 * interval) to get it back. The membership writer ({@code udfs.flink.membership_writes}) woke once
 * per engine step that changed membership, and its store clients several times more per step;
 * in batches it wakes once per batch, and writes the batch's changes together.
 *
 * <p>A batch leaves when it holds {@code maxRows} rows, {@code maxDelayMs} after its first row
 * (processing time), before every checkpoint barrier, before every watermark, and at the end of
 * the input. So no row waits in this operator across a checkpoint: it keeps no state, and a
 * barrier still reaches the operator behind it only after every row emitted before it, which is
 * what that operator's "durable before checkpointed" rests on. A row lost with a failure was
 * emitted after the last completed checkpoint, so the engine emits it again after the restore.
 *
 * <p>The batch row is Row(topic, null, JSON array, null) with the newest timestamp of its rows.
 */
public final class BatchJsonRows extends AbstractStreamOperator<Row>
        implements OneInputStreamOperator<Row, Row>, BoundedOneInput {

    private static final long serialVersionUID = 1L;

    private final String topic;
    private final int maxRows;
    private final long maxDelayMs;

    private transient ByteArrayOutputStream batch;
    private transient int rows;
    private transient long newestTimestamp;
    private transient boolean hasTimestamp;
    private transient ScheduledFuture<?> deadline;

    /**
     * @param topic the batch rows' topic field
     * @param maxRows a batch leaves once it holds this many rows (at least 1)
     * @param maxDelayMs and at most this long (processing time) after its first row (at least 1)
     */
    public BatchJsonRows(String topic, int maxRows, long maxDelayMs) {
        if (maxRows < 1 || maxDelayMs < 1) {
            throw new IllegalArgumentException("BatchJsonRows: maxRows and maxDelayMs must be "
                    + "positive, got " + maxRows + " and " + maxDelayMs);
        }
        this.topic = topic;
        this.maxRows = maxRows;
        this.maxDelayMs = maxDelayMs;
        // chained (Flink 2's default for an operator) to the engine's routing: it runs on the
        // engine's thread, in Java, and needs no task of its own
    }

    @Override
    public void open() throws Exception {
        super.open();
        batch = new ByteArrayOutputStream(4096);
    }

    @Override
    public void processElement(StreamRecord<Row> element) throws Exception {
        Object value = element.getValue().getField(2);
        if (!(value instanceof byte[])) {
            throw new IllegalArgumentException("BatchJsonRows: a row without a byte[] value "
                    + "(field 2): " + element.getValue());
        }
        batch.write(rows == 0 ? '[' : ',');
        batch.write((byte[]) value);
        rows++;
        if (element.hasTimestamp()) {
            newestTimestamp = hasTimestamp
                    ? Math.max(newestTimestamp, element.getTimestamp()) : element.getTimestamp();
            hasTimestamp = true;
        }
        if (rows >= maxRows) {
            flush();
        } else if (rows == 1) {
            long due = getProcessingTimeService().getCurrentProcessingTime() + maxDelayMs;
            deadline = getProcessingTimeService().registerTimer(due, time -> flush());
        }
    }

    @Override
    public void processWatermark(Watermark mark) throws Exception {
        flush();
        super.processWatermark(mark);
    }

    @Override
    public void prepareSnapshotPreBarrier(long checkpointId) throws Exception {
        flush();
        super.prepareSnapshotPreBarrier(checkpointId);
    }

    @Override
    public void endInput() {
        flush();
    }

    @Override
    public void finish() throws Exception {
        flush();
        super.finish();
    }

    /** Emits the batch, if any, and starts an empty one. */
    private void flush() {
        if (deadline != null) {
            deadline.cancel(false);
            deadline = null;
        }
        if (rows == 0) {
            return;
        }
        batch.write(']');
        Row out = Row.of(topic, null, batch.toByteArray(), null);
        output.collect(hasTimestamp ? new StreamRecord<>(out, newestTimestamp)
                : new StreamRecord<>(out));
        batch.reset();
        rows = 0;
        hasTimestamp = false;
    }
}
