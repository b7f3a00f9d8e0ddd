package io.nudgeflow.flink;

import java.io.IOException;
import java.util.HexFormat;
import java.util.Map;
import java.util.concurrent.ConcurrentHashMap;
import org.apache.avro.generic.GenericDatumReader;
import org.apache.avro.generic.GenericRecord;
import org.apache.avro.io.BinaryDecoder;
import org.apache.avro.io.DecoderFactory;
import org.apache.kafka.common.errors.SerializationException;
import org.apache.kafka.common.serialization.Deserializer;

/**
 * Reads a nudgeflow Kafka value, Avro single-object encoded ({@code C3 01}, the 8-byte
 * little-endian CRC-64-AVRO fingerprint of the writer schema, the Avro binary body), into a
 * {@link GenericRecord} of the <em>current</em> schema of that record: data written with a past
 * version (schemas/history) is resolved, so fields the writer did not have get their defaults.
 * The writer schema is found by fingerprint among the schemas shipped in this jar; there is no
 * registry.
 *
 * <p>Use it as a plain Kafka {@code value.deserializer}:
 *
 * <pre>{@code
 * props.put("value.deserializer", "io.nudgeflow.flink.SingleObjectDeserializer");
 * props.put("nudgeflow.expect.record", "TriggerEvent"); // optional
 * }</pre>
 *
 * <p>A null value (a tombstone) gives null. Anything else that cannot be read throws a
 * {@link SerializationException} saying what is wrong (KafkaConsumer adds the partition and
 * offset): no single-object marker, a fingerprint of no shipped schema (a newer producer: upgrade
 * this jar), a body that does not match its schema, or, with {@value #EXPECT_CONFIG} set, a
 * record of another type. Timestamps are {@code long} epoch milliseconds, strings {@code Utf8},
 * enums {@code GenericData.EnumSymbol} (Avro's generic representation, no logical-type
 * conversion).
 */
public final class SingleObjectDeserializer implements Deserializer<GenericRecord> {

    /** Optional consumer property: the record (short or full name) every value must hold. */
    public static final String EXPECT_CONFIG = "nudgeflow.expect.record";

    private static final int HEADER_SIZE = 10;
    private static final String NAMESPACE = "io.nudgeflow";

    private final ShippedSchemas schemas;
    // one resolving reader per writer version, made on first use (readers are reusable)
    private final Map<Long, GenericDatumReader<GenericRecord>> readers = new ConcurrentHashMap<>();
    private String expected;
    private BinaryDecoder decoder;

    /** A deserializer of every record type shipped in this jar (what Kafka instantiates). */
    public SingleObjectDeserializer() {
        this(ShippedSchemas.shipped(), null);
    }

    /**
     * A deserializer over the given schemas that accepts only one record type.
     *
     * @param expect short ({@code TriggerEvent}) or full record name; null accepts any
     */
    public SingleObjectDeserializer(ShippedSchemas schemas, String expect) {
        this.schemas = schemas;
        this.expected = expect == null ? null : fullName(expect);
    }

    @Override
    public void configure(Map<String, ?> configs, boolean isKey) {
        Object expect = configs.get(EXPECT_CONFIG);
        if (expect != null && !expect.toString().isEmpty()) {
            expected = fullName(expect.toString());
        }
    }

    @Override
    public GenericRecord deserialize(String topic, byte[] data) {
        if (data == null) {
            return null;
        }
        long fingerprint = fingerprintOf(topic, data);
        ShippedSchemas.Version version = schemas.byFingerprint(fingerprint);
        if (version == null) {
            throw new SerializationException(
                    "unknown schema fingerprint " + ShippedSchemas.wireHex(fingerprint) + " in a value on topic "
                            + topic + ": it is no version of the schemas in this jar ("
                            + schemas.describe() + "). The producer wrote it with a newer or"
                            + " unpublished schema: upgrade the nudgeflow-flink jar if the"
                            + " producer is newer, otherwise check the producer uses schemas/");
        }
        String name = version.current().getFullName();
        if (expected != null && !expected.equals(name)) {
            throw new SerializationException(
                    "expected a " + expected + " on topic " + topic + " but the value holds a "
                            + name + " (" + version.source() + "); check what the producer writes"
                            + " there, or unset " + EXPECT_CONFIG + " to accept any record type");
        }
        decoder = DecoderFactory.get()
                .binaryDecoder(data, HEADER_SIZE, data.length - HEADER_SIZE, decoder);
        try {
            GenericRecord record = readerFor(fingerprint, version).read(null, decoder);
            if (!decoder.isEnd()) {
                throw new IOException("bytes left over after the body");
            }
            return record;
        } catch (IOException | RuntimeException e) {
            throw new SerializationException(
                    "cannot decode a " + name + " on topic " + topic + " written with "
                            + version.source() + ": the body of " + (data.length - HEADER_SIZE)
                            + " bytes does not match that schema (" + e + "). The value is corrupt"
                            + " or its producer used another schema than its fingerprint says",
                    e);
        }
    }

    /** The fingerprint after the marker; throws if the value is not single-object encoded. */
    private static long fingerprintOf(String topic, byte[] data) {
        if (data.length < HEADER_SIZE || data[0] != (byte) 0xC3 || data[1] != (byte) 0x01) {
            int shown = Math.min(data.length, 8);
            String start = shown == 0 ? "nothing (it is empty)"
                    : HexFormat.ofDelimiter(" ").formatHex(data, 0, shown);
            String hint = data.length > 0 && data[0] == 0
                    ? " (a leading 00 is Confluent Schema Registry framing: use Confluent's"
                            + " KafkaAvroDeserializer for that topic)"
                    : "";
            throw new SerializationException(
                    "not Avro single-object encoding: a value on topic " + topic + " of "
                            + data.length + " bytes starts with " + start + hint + "; expected C3 01"
                            + " and an 8-byte schema fingerprint. Check that this topic carries"
                            + " nudgeflow records");
        }
        long fingerprint = 0;
        for (int i = HEADER_SIZE - 1; i >= 2; i--) { // little endian
            fingerprint = (fingerprint << 8) | (data[i] & 0xFFL);
        }
        return fingerprint;
    }

    private GenericDatumReader<GenericRecord> readerFor(
            long fingerprint, ShippedSchemas.Version version) {
        return readers.computeIfAbsent(
                fingerprint, f -> new GenericDatumReader<>(version.writer(), version.current()));
    }

    private String fullName(String name) {
        String full = name.contains(".") ? name : NAMESPACE + "." + name;
        if (schemas.current(full) == null) {
            throw new IllegalArgumentException(
                    EXPECT_CONFIG + "=" + name + " names no record in this jar; known: "
                            + schemas.describe());
        }
        return full;
    }
}
