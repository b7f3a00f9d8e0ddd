package io.nudgeflow.flink;

import java.io.File;
import java.io.IOException;
import java.io.InputStream;
import java.io.UncheckedIOException;
import java.net.JarURLConnection;
import java.net.URISyntaxException;
import java.net.URL;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.util.ArrayList;
import java.util.Collections;
import java.util.Enumeration;
import java.util.HexFormat;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.TreeMap;
import java.util.jar.JarEntry;
import java.util.jar.JarFile;
import java.util.stream.Stream;
import org.apache.avro.Schema;
import org.apache.avro.SchemaNormalization;

/**
 * Every version of nudgeflow's Avro contract, as shipped in this jar: the build copies
 * {@code schemas/*.avsc} (current versions) and {@code schemas/history/*.avsc} (published
 * earlier versions) into {@code io/nudgeflow/schemas/}. Each version is known by its CRC-64-AVRO
 * fingerprint, the 8 bytes after {@code C3 01} in single-object encoding.
 *
 * <p>Each file is parsed with its own {@link Schema.Parser}: the files repeat shared named types
 * (e.g. {@code io.nudgeflow.Channel}) verbatim, which one parser would refuse as redefinitions.
 */
public final class ShippedSchemas {

    /** Where the build puts the schema files inside the jar. */
    public static final String RESOURCE_DIR = "io/nudgeflow/schemas/";

    /** One published schema version. */
    public static final class Version {
        private final Schema writer;
        private final Schema current;
        private final String source;

        Version(Schema writer, Schema current, String source) {
            this.writer = writer;
            this.current = current;
            this.source = source;
        }

        /** The schema the producer wrote with. */
        public Schema writer() {
            return writer;
        }

        /** The current schema of the same record, which data of this version resolves to. */
        public Schema current() {
            return current;
        }

        /** The file it came from, e.g. {@code history/TriggerEvent.v1.avsc}. */
        public String source() {
            return source;
        }
    }

    private static volatile ShippedSchemas shipped;

    private final Map<Long, Version> byFingerprint;
    private final Map<String, Schema> currentByName;

    private ShippedSchemas(Map<Long, Version> byFingerprint, Map<String, Schema> currentByName) {
        this.byFingerprint = Collections.unmodifiableMap(byFingerprint);
        this.currentByName = Collections.unmodifiableMap(currentByName);
    }

    /** The schemas in this jar, read once per class loader. */
    public static ShippedSchemas shipped() {
        ShippedSchemas loaded = shipped;
        if (loaded == null) {
            synchronized (ShippedSchemas.class) {
                if (shipped == null) {
                    shipped = fromFiles(readResources());
                }
                loaded = shipped;
            }
        }
        return loaded;
    }

    /**
     * Builds the set from file texts by relative path ({@code X.avsc}, {@code history/X.vN.avsc}).
     *
     * @throws IllegalStateException if a history file has no current version of the same name
     */
    public static ShippedSchemas fromFiles(Map<String, String> files) {
        Map<String, Schema> current = new TreeMap<>();
        Map<String, Schema> history = new TreeMap<>();
        files.forEach(
                (path, text) -> {
                    Schema schema = new Schema.Parser().parse(text);
                    (path.startsWith("history/") ? history : current).put(path, schema);
                });
        Map<String, Schema> currentByName = new TreeMap<>();
        Map<Long, Version> byFingerprint = new LinkedHashMap<>();
        current.forEach(
                (path, schema) -> {
                    currentByName.put(schema.getFullName(), schema);
                    byFingerprint.put(fingerprint(schema), new Version(schema, schema, path));
                });
        history.forEach(
                (path, schema) -> {
                    Schema now = currentByName.get(schema.getFullName());
                    if (now == null) {
                        throw new IllegalStateException(
                                "schemas/" + path + " is a past version of " + schema.getFullName()
                                        + " but no current schemas/*.avsc defines that record;"
                                        + " restore the current file or remove the history one");
                    }
                    byFingerprint.put(fingerprint(schema), new Version(schema, now, path));
                });
        return new ShippedSchemas(byFingerprint, currentByName);
    }

    /** The CRC-64-AVRO fingerprint of a schema's Parsing Canonical Form, as Avro computes it. */
    public static long fingerprint(Schema schema) {
        return SchemaNormalization.parsingFingerprint64(schema);
    }

    /** The fingerprint as its 8 bytes appear on the wire, in hex (as schemas/README.md shows). */
    public static String wireHex(long fingerprint) {
        byte[] bytes = new byte[8];
        for (int i = 0; i < 8; i++) {
            bytes[i] = (byte) (fingerprint >>> (8 * i)); // little endian
        }
        return HexFormat.of().formatHex(bytes);
    }

    /** The version with this fingerprint, or null if no shipped schema has it. */
    public Version byFingerprint(long fingerprint) {
        return byFingerprint.get(fingerprint);
    }

    /** Every known version by fingerprint. */
    public Map<Long, Version> versions() {
        return byFingerprint;
    }

    /** The current schema of a record by full name ({@code io.nudgeflow.TriggerEvent}), or null. */
    public Schema current(String fullName) {
        return currentByName.get(fullName);
    }

    /** Names and versions, for error messages: "io.nudgeflow.ClickEvent (2 versions), ...". */
    public String describe() {
        Map<String, Integer> counts = new TreeMap<>();
        byFingerprint.values().forEach(v -> counts.merge(v.current().getFullName(), 1, Integer::sum));
        List<String> parts = new ArrayList<>();
        counts.forEach((name, n) -> parts.add(name + " (" + n + (n == 1 ? " version)" : " versions)")));
        return String.join(", ", parts);
    }

    private static Map<String, String> readResources() {
        ClassLoader loader = ShippedSchemas.class.getClassLoader();
        URL dir = loader.getResource(RESOURCE_DIR);
        if (dir == null) {
            throw new IllegalStateException(
                    RESOURCE_DIR + " is not on the classpath: this nudgeflow-flink jar was built"
                            + " without the schemas (its pom copies ../../../schemas); rebuild it"
                            + " from a full checkout with `nudgeflow jars flink`");
        }
        Map<String, String> files = new TreeMap<>();
        try {
            if ("jar".equals(dir.getProtocol())) {
                JarURLConnection connection = (JarURLConnection) dir.openConnection();
                connection.setUseCaches(false);
                try (JarFile jar = connection.getJarFile()) {
                    Enumeration<JarEntry> entries = jar.entries();
                    while (entries.hasMoreElements()) {
                        JarEntry entry = entries.nextElement();
                        String name = entry.getName();
                        if (name.startsWith(RESOURCE_DIR) && name.endsWith(".avsc")) {
                            try (InputStream in = jar.getInputStream(entry)) {
                                files.put(
                                        name.substring(RESOURCE_DIR.length()),
                                        new String(in.readAllBytes(), StandardCharsets.UTF_8));
                            }
                        }
                    }
                }
            } else {
                // target/classes while developing, or an exploded classpath
                Path root = Paths.get(dir.toURI());
                try (Stream<Path> walk = Files.walk(root)) {
                    for (Path path : (Iterable<Path>) walk::iterator) {
                        if (path.toString().endsWith(".avsc")) {
                            String relative = root.relativize(path).toString();
                            files.put(
                                    relative.replace(File.separatorChar, '/'),
                                    Files.readString(path, StandardCharsets.UTF_8));
                        }
                    }
                }
            }
        } catch (IOException e) {
            throw new UncheckedIOException("cannot read the schemas at " + dir, e);
        } catch (URISyntaxException e) {
            throw new IllegalStateException("cannot read the schemas at " + dir, e);
        }
        if (files.isEmpty()) {
            throw new IllegalStateException(
                    "no .avsc files under " + dir + "; rebuild the jar with `nudgeflow jars flink`");
        }
        return files;
    }
}
