package io.nudgeflow.flink;

import org.apache.flink.api.common.functions.MapFunction;
import org.apache.flink.types.Row;

/**
 * Row(topic, partition, offset, timestamp, key, value) of {@link
 * KafkaRecordWithMetadataDeserializer} to Row(target topic, key, value) of {@link
 * RoutedRecordSerializer}: the benchmark's ceiling job, which moves the clicks through the same
 * Kafka source and sink as the job, with no processing (and no Python) in between.
 */
public final class PassThroughRecord implements MapFunction<Row, Row> {

    private static final long serialVersionUID = 1L;

    private final String targetTopic;

    public PassThroughRecord(String targetTopic) {
        this.targetTopic = targetTopic;
    }

    @Override
    public Row map(Row record) {
        return Row.of(targetTopic, record.getField(4), record.getField(5), null);
    }
}
