package io.nudgeflow.flink.tools;

import io.nudgeflow.flink.ShippedSchemas;
import io.nudgeflow.flink.SingleObjectDeserializer;
import java.io.PrintStream;
import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.stream.Collectors;
import org.apache.avro.generic.GenericData;
import org.apache.avro.generic.GenericRecord;
import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.consumer.KafkaConsumer;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.errors.RecordDeserializationException;
import org.apache.kafka.common.serialization.ByteArrayDeserializer;

/**
 * Prints a nudgeflow topic's committed records as JSON lines, read with a plain KafkaConsumer
 * and {@link SingleObjectDeserializer}: the reference of how a Java consumer reads the default
 * encoding, and what the integration test tests/integration/test_jvm_consumer.py runs.
 *
 * <pre>
 * java -cp nudgeflow-flink.jar:avro.jar:kafka-clients.jar:... io.nudgeflow.flink.tools.DumpTopic \
 *     BOOTSTRAP TOPIC [EXPECTED_COUNT [TIMEOUT_MS]]
 * java -cp ... io.nudgeflow.flink.tools.DumpTopic --fingerprints
 * </pre>
 *
 * <p>Reads every partition from the beginning (no consumer group, nothing committed) until
 * EXPECTED_COUNT lines were printed, or, without it, until the end of every partition; exits 1
 * if TIMEOUT_MS (default 60 s) passes first. A line is {@code {"partition":..,"offset":..,
 * "key":..,"value":<the record>}}, or {@code "error":<message>} in place of the value for a
 * record the deserializer refused (the dump then goes on). {@code --fingerprints} prints the
 * shipped schema versions instead: {@code {"source":..,"fingerprint":..}}. The system property
 * {@code -Dnudgeflow.expect.record=NAME} is passed on to the deserializer (values of other
 * record types are then reported as errors).
 */
public final class DumpTopic {

    private DumpTopic() {}

    /** Entry point; see the class comment for the arguments. */
    public static void main(String[] args) {
        // kafka-clients logs through SLF4J; keep its INFO chatter (the whole config) off stderr
        System.setProperty("org.slf4j.simpleLogger.defaultLogLevel", "warn");
        PrintStream out = new PrintStream(System.out, true, StandardCharsets.UTF_8);
        if (args.length == 1 && args[0].equals("--fingerprints")) {
            ShippedSchemas.shipped().versions().forEach((f, v) -> out.println(
                    "{\"source\":" + quote(v.source()) + ",\"fingerprint\":"
                            + quote(ShippedSchemas.wireHex(f)) + "}"));
            return;
        }
        if (args.length < 2 || args.length > 4) {
            System.err.println(
                    "usage: DumpTopic BOOTSTRAP TOPIC [EXPECTED_COUNT [TIMEOUT_MS]]"
                            + " | DumpTopic --fingerprints");
            System.exit(2);
        }
        long expected = args.length > 2 ? Long.parseLong(args[2]) : -1;
        long timeoutMs = args.length > 3 ? Long.parseLong(args[3]) : 60_000;
        System.exit(dump(args[0], args[1], expected, timeoutMs, out) ? 0 : 1);
    }

    private static boolean dump(
            String bootstrap, String topic, long expected, long timeoutMs, PrintStream out) {
        Properties props = new Properties();
        props.put(ConsumerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        // the job writes transactionally: never show records of open or aborted transactions
        props.put(ConsumerConfig.ISOLATION_LEVEL_CONFIG, "read_committed");
        props.put(ConsumerConfig.ENABLE_AUTO_COMMIT_CONFIG, "false");
        props.put(ConsumerConfig.KEY_DESERIALIZER_CLASS_CONFIG, ByteArrayDeserializer.class);
        props.put(ConsumerConfig.VALUE_DESERIALIZER_CLASS_CONFIG, SingleObjectDeserializer.class);
        String expect = System.getProperty(SingleObjectDeserializer.EXPECT_CONFIG);
        if (expect != null) {
            props.put(SingleObjectDeserializer.EXPECT_CONFIG, expect);
        }
        long deadline = System.currentTimeMillis() + timeoutMs;
        long printed = 0;
        try (KafkaConsumer<byte[], GenericRecord> consumer = new KafkaConsumer<>(props)) {
            List<TopicPartition> partitions = consumer.partitionsFor(topic).stream()
                    .map(p -> new TopicPartition(topic, p.partition()))
                    .collect(Collectors.toList());
            consumer.assign(partitions);
            consumer.seekToBeginning(partitions);
            Map<TopicPartition, Long> ends = consumer.endOffsets(partitions);
            while (System.currentTimeMillis() < deadline) {
                if (expected >= 0 ? printed >= expected : atEnd(consumer, ends)) {
                    return true;
                }
                try {
                    for (ConsumerRecord<byte[], GenericRecord> r
                            : consumer.poll(Duration.ofMillis(200))) {
                        out.println("{\"partition\":" + r.partition() + ",\"offset\":" + r.offset()
                                + ",\"key\":" + quoteBytes(r.key()) + ",\"value\":"
                                + GenericData.get().toString(r.value()) + "}");
                        printed++;
                    }
                } catch (RecordDeserializationException e) {
                    // report the bad record and go on after it, as a dead-letter reader would
                    out.println("{\"partition\":" + e.topicPartition().partition() + ",\"offset\":"
                            + e.offset() + ",\"key\":" + quoteBytes(e.keyBuffer())
                            + ",\"error\":" + quote(String.valueOf(e.getCause())) + "}");
                    printed++;
                    consumer.seek(e.topicPartition(), e.offset() + 1);
                }
            }
        }
        System.err.println("DumpTopic: timed out after " + timeoutMs + " ms on " + topic
                + " with " + printed + " record(s) printed"
                + (expected >= 0 ? " of " + expected + " expected" : ""));
        return false;
    }

    private static boolean atEnd(
            KafkaConsumer<byte[], GenericRecord> consumer, Map<TopicPartition, Long> ends) {
        return ends.entrySet().stream()
                .allMatch(e -> consumer.position(e.getKey()) >= e.getValue());
    }

    private static String quoteBytes(java.nio.ByteBuffer buffer) {
        if (buffer == null) {
            return "null";
        }
        byte[] bytes = new byte[buffer.remaining()];
        buffer.duplicate().get(bytes);
        return quote(new String(bytes, StandardCharsets.UTF_8));
    }

    private static String quoteBytes(byte[] bytes) {
        return bytes == null ? "null" : quote(new String(bytes, StandardCharsets.UTF_8));
    }

    /** A JSON string literal. */
    private static String quote(String s) {
        StringBuilder b = new StringBuilder("\"");
        for (char c : s.toCharArray()) {
            switch (c) {
                case '"' -> b.append("\\\"");
                case '\\' -> b.append("\\\\");
                case '\n' -> b.append("\\n");
                case '\r' -> b.append("\\r");
                case '\t' -> b.append("\\t");
                default -> {
                    if (c < 0x20) {
                        b.append(String.format("\\u%04x", (int) c));
                    } else {
                        b.append(c);
                    }
                }
            }
        }
        return b.append('"').toString();
    }
}
