package org.sparkatron.model;

import com.fasterxml.jackson.core.JsonParser;
import com.fasterxml.jackson.core.JsonProcessingException;
import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import java.io.IOException;
import java.util.Collection;
import java.util.Iterator;
import java.util.Locale;

/**
 * Strict reading of JSON configs (model {@code config.json}, training configs): a duplicate key is refused
 * instead of the last one winning, and every value must have its type -- a string where a number or a
 * boolean belongs is refused instead of being coerced or replaced by a default, numbers must be finite,
 * and an unknown key is refused naming the closest known one. Every refusal is an
 * IllegalArgumentException whose one-line message names the key and the value. Stateless, thread-safe.
 */
public final class ConfigJson {
    /** A mapper that refuses duplicate keys; safe to share between threads. */
    public static final ObjectMapper MAPPER = new ObjectMapper().enable(JsonParser.Feature.STRICT_DUPLICATE_DETECTION);

    private ConfigJson() {
    }

    /**
     * Parses JSON text; a syntax error or a duplicate key becomes an IllegalArgumentException naming
     * {@code source} and the line and column.
     */
    public static JsonNode parse(byte[] json, String source) {
        try {
            JsonNode n = MAPPER.readTree(json);
            if (n == null || n.isMissingNode()) {
                throw new IllegalArgumentException(source + ": empty, expected a JSON object");
            }
            return n;
        } catch (JsonProcessingException e) {
            String where = e.getLocation() == null ? "" : " (line " + e.getLocation().getLineNr() + ", column "
                    + e.getLocation().getColumnNr() + ")";
            String msg = e.getOriginalMessage();
            if (msg.startsWith("Duplicate field")) {
                msg = "duplicate key" + msg.substring("Duplicate field".length()) + ": give each key once";
            }
            throw new IllegalArgumentException(source + ": not valid JSON: " + msg.lines().findFirst().orElse(msg) + where, e);
        } catch (IOException e) {
            throw new IllegalArgumentException(source + ": cannot parse: " + e.getMessage(), e);
        }
    }

    /** The integer at {@code key}; refused if absent, null, fractional, out of int range or not a number. */
    public static int requiredInt(JsonNode o, String key) {
        JsonNode n = o.get(key);
        if (n == null || n.isNull()) {
            throw new IllegalArgumentException("missing required key '" + key + "'");
        }
        return intValue(key, n);
    }

    /** The integer at {@code key}, or {@code dflt} when absent or null. */
    public static int optionalInt(JsonNode o, String key, int dflt) {
        JsonNode n = o.get(key);
        return n == null || n.isNull() ? dflt : intValue(key, n);
    }

    private static int intValue(String key, JsonNode n) {
        if (!n.isIntegralNumber() || !n.canConvertToInt()) {
            throw new IllegalArgumentException("key '" + key + "' must be an integer"
                    + (n.isIntegralNumber() ? " below 2^31" : "") + ", got " + n);
        }
        return n.intValue();
    }

    /** The finite number at {@code key}, or {@code dflt} when absent or null; strings are refused. */
    public static double number(JsonNode o, String key, double dflt) {
        JsonNode n = o.get(key);
        if (n == null || n.isNull()) {
            return dflt;
        }
        if (!n.isNumber()) {
            throw new IllegalArgumentException("key '" + key + "' must be a number, got " + n);
        }
        if (!Double.isFinite(n.doubleValue())) {
            throw new IllegalArgumentException("key '" + key + "' must be a finite number, got " + n);
        }
        return n.doubleValue();
    }

    /** The boolean at {@code key}, or {@code dflt} when absent or null; "yes", 1 and "true" are refused. */
    public static boolean bool(JsonNode o, String key, boolean dflt) {
        JsonNode n = o.get(key);
        if (n == null || n.isNull()) {
            return dflt;
        }
        if (!n.isBoolean()) {
            throw new IllegalArgumentException("key '" + key + "' must be true or false, got " + n);
        }
        return n.booleanValue();
    }

    /** The string at {@code key}, or {@code dflt} when absent or null; numbers, booleans and objects are refused. */
    public static String string(JsonNode o, String key, String dflt) {
        JsonNode n = o.get(key);
        if (n == null || n.isNull()) {
            return dflt;
        }
        if (!n.isTextual()) {
            throw new IllegalArgumentException("key '" + key + "' must be a string, got " + n);
        }
        return n.textValue();
    }

    /**
     * Refuses any key of {@code o} not in {@code known}, suggesting the closest known key, or else listing
     * {@code listed} (the keys worth showing: a long list of accepted-and-ignored keys is not).
     */
    public static void refuseUnknown(JsonNode o, Collection<String> known, Collection<String> listed, String what) {
        for (Iterator<String> it = o.fieldNames(); it.hasNext(); ) {
            String k = it.next();
            if (!known.contains(k)) {
                String near = closest(k, known);
                throw new IllegalArgumentException("unknown key '" + k + "' in " + what
                        + (near != null ? " (did you mean '" + near + "'?)" : "; its keys: " + new java.util.TreeSet<>(listed)));
            }
        }
    }

    /** The known key within edit distance 2 of {@code k} (case-insensitive), or null. */
    static String closest(String k, Collection<String> known) {
        String best = null;
        int bestD = 3;
        for (String c : known) {
            int d = distance(k.toLowerCase(Locale.ROOT), c.toLowerCase(Locale.ROOT));
            if (d < bestD) {
                bestD = d;
                best = c;
            }
        }
        return best;
    }

    private static int distance(String a, String b) {
        int[] prev = new int[b.length() + 1];
        int[] cur = new int[b.length() + 1];
        for (int j = 0; j <= b.length(); j++) {
            prev[j] = j;
        }
        for (int i = 1; i <= a.length(); i++) {
            cur[0] = i;
            for (int j = 1; j <= b.length(); j++) {
                cur[j] = Math.min(Math.min(cur[j - 1], prev[j]) + 1, prev[j - 1] + (a.charAt(i - 1) == b.charAt(j - 1) ? 0 : 1));
            }
            int[] t = prev;
            prev = cur;
            cur = t;
        }
        return prev[b.length()];
    }
}
