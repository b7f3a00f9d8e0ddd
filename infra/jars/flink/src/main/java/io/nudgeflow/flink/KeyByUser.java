package io.nudgeflow.flink;

import org.apache.flink.api.common.functions.MapFunction;
import org.apache.flink.types.Row;

/**
 * Puts a row's user id in front of it, Row(key, row), the shape PyFlink's keyed Python operators
 * read: the Java stand-in for the Python {@code AddKey} map that {@code key_by(lambda)} inserts.
 *
 * <p>With {@code key_by(lambda)} that map is a Python operator of its own, a thread that contends
 * for the one interpreter with the decoders and the engine for every event; here keying costs no
 * Python call. The key stream is then keyed by PyFlink's own {@code KeyByKeySelector} with the
 * same key type (Row(STRING)), so keys, key groups and keyed state are the same as before and a
 * savepoint of the previous layout restores.
 */
public final class KeyByUser implements MapFunction<Row, Row> {

    private static final long serialVersionUID = 1L;

    private final int field;

    /** @param field the position of the user id (a String) in the input row */
    public KeyByUser(int field) {
        this.field = field;
    }

    @Override
    public Row map(Row row) {
        Object key = row.getField(field);
        if (!(key instanceof String)) {
            throw new IllegalArgumentException("KeyByUser: field " + field
                    + " of an engine input is not a user id: " + key);
        }
        return Row.of(key, row);
    }
}
