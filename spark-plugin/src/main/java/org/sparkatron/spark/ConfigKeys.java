package org.sparkatron.spark;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.node.ObjectNode;
import org.sparkatron.model.ConfigJson;

/**
 * Typed readers of a training config's keys for {@link TrainConfig}: each value must have its type (a
 * string where a number or a boolean belongs is refused, never coerced), integers must fit their Java
 * type, numbers must be finite; a refusal is an {@link IllegalArgumentException} naming the config key and
 * the value. A missing or null key gives the default. Stateless.
 */
final class ConfigKeys {
    private ConfigKeys() {
    }

    /**
     * Moves {@code alias} (another name of {@code key}, e.g. Megatron's) onto {@code key}, so the normalised
     * config has one key; refuses the two given with different values ({@code ignoreCase}: strings compared
     * case-insensitively).
     */
    static void alias(ObjectNode o, String key, String alias, boolean ignoreCase) {
        if (!o.has(alias)) {
            return;
        }
        JsonNode a = o.remove(alias);
        if (o.has(key)) {
            JsonNode k = o.get(key);
            boolean same = ignoreCase && k.isTextual() && a.isTextual() ? k.asText().equalsIgnoreCase(a.asText()) : k.equals(a);
            if (!same) {
                throw new IllegalArgumentException("config keys '" + key + "' (" + k + ") and '" + alias + "' (" + a
                        + ") disagree: give one of them");
            }
        }
        o.set(key, a);
    }

    static int intKey(ObjectNode o, String k, int dflt, int min) {
        if (!o.hasNonNull(k)) {
            return dflt;
        }
        JsonNode n = o.get(k);
        if (!n.isIntegralNumber() || !n.canConvertToInt()) {
            throw new IllegalArgumentException("config key '" + k + "' must be an integer, got " + n);
        }
        if (n.asInt() < min) {
            throw new IllegalArgumentException("config key '" + k + "' must be >= " + min + ", got " + n.asInt());
        }
        return n.asInt();
    }

    static String str(ObjectNode o, String k, String dflt) {
        return configValue(() -> ConfigJson.string(o, k, dflt));
    }

    static boolean bool(ObjectNode o, String k, boolean dflt) {
        return configValue(() -> ConfigJson.bool(o, k, dflt));
    }

    /** ConfigJson's refusals say "key 'x'": here it is a config key. */
    static <T> T configValue(java.util.function.Supplier<T> read) {
        try {
            return read.get();
        } catch (IllegalArgumentException e) {
            throw new IllegalArgumentException("config " + e.getMessage(), e);
        }
    }

    static boolean boolKey(ObjectNode o, String k) {
        JsonNode n = o.get(k);
        if (n == null || n.isNull()) {
            return false;
        }
        if (!n.isBoolean()) {
            throw new IllegalArgumentException("config key '" + k + "' must be true or false, got " + n);
        }
        return n.asBoolean();
    }

    static long requireLong(ObjectNode o, String k) {
        JsonNode n = o.get(k);
        if (!n.isIntegralNumber() || !n.canConvertToLong()) {
            throw new IllegalArgumentException("config key '" + k + "' must be an integer, got " + n);
        }
        return n.asLong();
    }

    static double dblKey(ObjectNode o, String k, double dflt) {
        if (!o.hasNonNull(k)) {
            return dflt;
        }
        JsonNode n = o.get(k);
        if (!n.isNumber()) {
            throw new IllegalArgumentException("config key '" + k + "' must be a number, got " + n);
        }
        if (!Double.isFinite(n.asDouble())) {
            throw new IllegalArgumentException("config key '" + k + "' must be a finite number, got " + n);
        }
        return n.asDouble();
    }
}
