package io.nudgeflow.flink;

import java.nio.charset.StandardCharsets;
import org.apache.flink.api.common.typeinfo.TypeInformation;
import org.apache.flink.api.common.typeinfo.Types;
import org.apache.flink.connector.kafka.source.reader.deserializer.KafkaRecordDeserializationSchema;
import org.apache.flink.kafka.shaded.org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.flink.kafka.shaded.org.apache.kafka.common.header.Header;
import org.apache.flink.types.Row;
import org.apache.flink.util.Collector;

/**
 * Emits every Kafka record as Row(topic, partition, offset, timestamp, key, value,
 * traceparent) without interpreting the bytes, so the Python decoder can dead-letter a bad
 * record with the place it came from. PyFlink only offers value-only deserializers in Python.
 * {@code traceparent} is the record's W3C trace context header, as text (null without one; its
 * validity is checked in Python, udfs/tracing.py).
 */
public final class KafkaRecordWithMetadataDeserializer
        implements KafkaRecordDeserializationSchema<Row> {

    private static final long serialVersionUID = 1L;

    /** Field names of the emitted rows, in order. */
    public static final String[] FIELD_NAMES = {
        "topic", "partition", "offset", "timestamp", "key", "value", "traceparent"
    };

    /** The W3C trace context header. */
    public static final String TRACEPARENT = "traceparent";

    @Override
    public void deserialize(ConsumerRecord<byte[], byte[]> record, Collector<Row> out) {
        out.collect(Row.of(
                record.topic(),
                record.partition(),
                record.offset(),
                record.timestamp(),
                record.key(),
                record.value(),
                traceparent(record)));
    }

    private static String traceparent(ConsumerRecord<byte[], byte[]> record) {
        Header header = record.headers().lastHeader(TRACEPARENT);
        if (header == null || header.value() == null || header.value().length > 128) {
            return null;
        }
        return new String(header.value(), StandardCharsets.US_ASCII);
    }

    @Override
    public TypeInformation<Row> getProducedType() {
        return Types.ROW_NAMED(
                FIELD_NAMES,
                Types.STRING,
                Types.INT,
                Types.LONG,
                Types.LONG,
                Types.PRIMITIVE_ARRAY(Types.BYTE),
                Types.PRIMITIVE_ARRAY(Types.BYTE),
                Types.STRING);
    }
}
