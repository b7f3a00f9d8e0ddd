package io.nudgeflow.flink;

import java.nio.charset.StandardCharsets;
import org.apache.flink.connector.kafka.sink.KafkaRecordSerializationSchema;
import org.apache.flink.kafka.shaded.org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.flink.types.Row;

/**
 * Writes Row(topic, key, value, traceparent) as a Kafka record to the row's topic, with the
 * row's W3C trace context as its {@code traceparent} header when there is one, and the row's
 * key (so
 * Kafka's default partitioner keeps one user's records in order on one partition). One sink can
 * so serve several topics (one per priority tier) under one transaction. PyFlink's Python topic
 * selector cannot set keys.
 *
 * <p>The record timestamp is left to the producer (the time of writing), not the element's
 * event time: event time is in the payload, and a timer that fires ahead of the wall clock
 * (e.g. at the end of a bounded run) would otherwise be refused by the broker, which rejects
 * timestamps more than message.timestamp.after.max.ms (1 h) in the future.
 */
public final class RoutedRecordSerializer implements KafkaRecordSerializationSchema<Row> {

    private static final long serialVersionUID = 1L;

    @Override
    public ProducerRecord<byte[], byte[]> serialize(
            Row element, KafkaSinkContext context, Long timestamp) {
        String topic = (String) element.getField(0);
        if (topic == null || topic.isEmpty()) {
            throw new IllegalArgumentException(
                    "RoutedRecordSerializer got a row without a topic: " + element);
        }
        ProducerRecord<byte[], byte[]> record = new ProducerRecord<>(
                topic, null, null, (byte[]) element.getField(1), (byte[]) element.getField(2));
        Object traceparent = element.getArity() > 3 ? element.getField(3) : null;
        if (traceparent != null) {
            record.headers().add(KafkaRecordWithMetadataDeserializer.TRACEPARENT,
                    ((String) traceparent).getBytes(StandardCharsets.US_ASCII));
        }
        return record;
    }
}
