package org.sparkatron.cli;

import java.nio.file.Path;
import java.util.LinkedHashMap;
import java.util.Map;
import java.util.Set;
import java.util.TreeSet;

/** {@code --key value} and {@code --flag} command-line options, with errors that name the option. */
final class Args {
    private final String command;
    private final Map<String, String> values = new LinkedHashMap<>();
    private final Set<String> used = new TreeSet<>();

    Args(String command, String[] argv, int from, Set<String> flags) {
        this.command = command;
        for (int i = from; i < argv.length; i++) {
            String a = argv[i];
            if (!a.startsWith("--") || a.length() == 2) {
                throw new UsageException("unexpected argument '" + a + "' (options are --name value)");
            }
            String key = a.substring(2);
            int eq = key.indexOf('=');
            if (values.containsKey(eq > 0 ? key.substring(0, eq) : key)) {
                throw new UsageException(command + ": option --" + (eq > 0 ? key.substring(0, eq) : key) + " is given twice");
            }
            if (eq > 0) {
                values.put(key.substring(0, eq), key.substring(eq + 1));
            } else if (flags.contains(key)) {
                values.put(key, "true");
            } else if (i + 1 < argv.length) {
                values.put(key, argv[++i]);
            } else {
                throw new UsageException("option --" + key + " needs a value");
            }
        }
    }

    String command() {
        return command;
    }

    String string(String key, String dflt) {
        used.add(key);
        return values.getOrDefault(key, dflt);
    }

    String required(String key) {
        used.add(key);
        String v = values.get(key);
        if (v == null) {
            throw new UsageException("missing required option --" + key);
        }
        return v;
    }

    Path path(String key) {
        return Path.of(required(key));
    }

    boolean flag(String key) {
        used.add(key);
        return Boolean.parseBoolean(values.getOrDefault(key, "false"));
    }

    int integer(String key, int dflt) {
        String v = string(key, null);
        if (v == null) {
            return dflt;
        }
        try {
            return Integer.parseInt(v);
        } catch (NumberFormatException e) {
            throw new UsageException("--" + key + " must be an integer, got '" + v + "'");
        }
    }

    int requiredInt(String key) {
        required(key);
        return integer(key, 0);
    }

    double number(String key, double dflt) {
        String v = string(key, null);
        if (v == null) {
            return dflt;
        }
        try {
            return Double.parseDouble(v);
        } catch (NumberFormatException e) {
            throw new UsageException("--" + key + " must be a number, got '" + v + "'");
        }
    }

    /** Refuses options nobody asked for (usually a typo). Call after reading all options. */
    void rejectUnknown() {
        for (String k : values.keySet()) {
            if (!used.contains(k)) {
                throw new UsageException("unknown option --" + k);
            }
        }
    }

    /** A command-line mistake: one line, exit status 2 ({@link Cli}). */
    static final class UsageException extends Cli.UsageException {
        private static final long serialVersionUID = 1L;

        UsageException(String message) {
            super(message);
        }
    }
}
