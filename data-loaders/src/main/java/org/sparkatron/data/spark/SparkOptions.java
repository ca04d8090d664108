package org.sparkatron.data.spark;

import java.util.ArrayList;
import java.util.Arrays;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import org.sparkatron.cli.Cli;

/**
 * The Spark part of a {@code ./sparkatron} Spark command's arguments, as spark-submit spells it:
 * {@code --master URL}, {@code --conf spark.key=value} (repeatable) and the shorter {@code --spark.key value};
 * {@link #rest} is everything else, in order, for the command's own options. Immutable.
 *
 * @param master   the master URL given, or null (the command then uses spark-submit's, or its local default)
 * @param settings Spark settings given, in order (a later one wins)
 * @param rest     the other arguments
 */
public record SparkOptions(String master, Map<String, String> settings, String[] rest) {

    /** Splits {@code args}; throws {@link Cli.UsageException} for a {@code --conf} without {@code key=value}. */
    public static SparkOptions extract(String[] args) {
        String master = null;
        Map<String, String> settings = new LinkedHashMap<>();
        List<String> rest = new ArrayList<>();
        for (int i = 0; i < args.length; i++) {
            String a = args[i];
            boolean spark = a.equals("--master") || a.equals("--conf") || a.startsWith("--spark.");
            if (spark && i + 1 >= args.length) {
                throw new Cli.UsageException("option " + a + " needs a value");
            }
            if (a.equals("--master")) {
                master = args[++i];
            } else if (a.equals("--conf")) {
                String kv = args[++i];
                int eq = kv.indexOf('=');
                if (eq <= 0 || !kv.startsWith("spark.")) {
                    throw new Cli.UsageException("--conf takes spark.key=value, got '" + kv + "'");
                }
                settings.put(kv.substring(0, eq), kv.substring(eq + 1));
            } else if (a.startsWith("--spark.")) {
                settings.put(a.substring(2), args[++i]);
            } else {
                rest.add(a);
            }
        }
        return new SparkOptions(master, Map.copyOf(settings), rest.toArray(new String[0]));
    }

    @Override
    public String toString() {
        return "SparkOptions[master=" + master + ", settings=" + settings + ", rest=" + Arrays.toString(rest) + "]";
    }
}
