package org.sparkatron.cli;

import java.io.FileNotFoundException;
import java.io.PrintStream;
import java.io.UncheckedIOException;
import java.nio.charset.CharacterCodingException;
import java.nio.file.AccessDeniedException;
import java.nio.file.FileSystemException;
import java.nio.file.NoSuchFileException;
import java.util.ArrayList;
import java.util.IdentityHashMap;
import java.util.List;
import java.util.Map;
import org.sparkatron.device.DeviceMemoryException;

/**
 * How every {@code ./sparkatron} command starts and ends, in one place: {@code --help} / {@code -h} print
 * the command's usage, {@code --verbose} turns on stack traces, and whatever the command throws becomes
 * one line on stderr and a stable exit status:
 * <ul>
 *   <li>{@value #OK}: success;</li>
 *   <li>{@value #INPUT}: a usage or input error, something the user can fix (an unknown option, a missing
 *       or unreadable path, a file in the wrong format, a job too large for its cluster): any
 *       {@link IllegalArgumentException} (a {@link UsageException} among them), a model too large for its
 *       device ({@link DeviceMemoryException}), a missing file, a denied permission, text that is not UTF-8,
 *       or Spark's {@code AnalysisException};</li>
 *   <li>{@value #FAILURE}: anything else (a failed Spark job, an I/O error, a bug, out of memory).</li>
 * </ul>
 * A command's own "did not work" outcome (the demo did not learn) is a {@value #FAILURE} it returns itself.
 * The line is {@code sparkatron CMD: MESSAGE}; with {@code --verbose} the stack trace follows it.
 * Stateless; {@link #main} ends the JVM, {@link #run} does not (tests call it).
 */
public final class Cli {
    public static final int OK = 0;
    public static final int FAILURE = 1;
    public static final int INPUT = 2;

    private Cli() {
    }

    /** A command's work: the arguments after the command name (without --verbose); returns the exit status. */
    @FunctionalInterface
    public interface Body {
        int run(String[] args) throws Exception;
    }

    /** A command-line mistake (unknown option, missing value): one line, exit status {@value #INPUT}. */
    public static class UsageException extends IllegalArgumentException {
        private static final long serialVersionUID = 1L;

        public UsageException(String message) {
            super(message);
        }
    }

    /** Runs {@code body} as {@link #run} does and exits the JVM with its status. Never returns. */
    public static void main(String command, String usage, String[] argv, Body body) {
        int status = run(command, usage, argv, System.out, System.err, body);
        System.out.flush();
        System.exit(status);
    }

    /**
     * Runs one command. {@code argv} may start with the command's name (as {@code ./sparkatron} passes it;
     * spark-submit does not) and may contain {@code --verbose} anywhere; {@code --help} or {@code -h}
     * anywhere prints {@code usage} to {@code out} and returns {@value #OK} without running anything.
     */
    public static int run(String command, String usage, String[] argv, PrintStream out, PrintStream err, Body body) {
        List<String> args = new ArrayList<>(List.of(argv));
        if (!args.isEmpty() && args.get(0).equals(command)) {
            args.remove(0);
        }
        boolean verbose = args.remove("--verbose") | Boolean.getBoolean("sparkatron.verbose");
        while (args.remove("--verbose")) {
            // repeated flag: once is enough
        }
        if (args.contains("--help") || args.contains("-h")) {
            out.println(usage);
            return OK;
        }
        try {
            return body.run(args.toArray(new String[0]));
        } catch (Throwable t) { // every outcome becomes a status; the JVM's own handler would print a trace
            report(command, t, verbose, err);
            return exitStatus(t);
        }
    }

    /** Prints the one-line report of {@code t} (and its stack trace when {@code verbose}). */
    public static void report(String command, Throwable t, boolean verbose, PrintStream err) {
        String line = "sparkatron " + command + ": " + describe(t);
        if (!verbose) {
            line += exitStatus(t) == FAILURE ? " (--verbose shows the stack trace)" : "";
            err.println(line);
        } else {
            err.println(line);
            t.printStackTrace(err);
        }
        err.flush();
    }

    /** {@value #INPUT} when the chain of causes holds a user's error, else {@value #FAILURE}. */
    public static int exitStatus(Throwable t) {
        return userError(t) != null ? INPUT : FAILURE;
    }

    /** The one line to show for {@code t}: the user's error where there is one, else the root cause. */
    public static String describe(Throwable t) {
        Throwable user = userError(t);
        if (user != null) {
            return userMessage(user);
        }
        if (t instanceof OutOfMemoryError || rootCause(t) instanceof OutOfMemoryError) {
            return "out of memory (" + firstLine(rootCause(t).getMessage())
                    + "); give the JVM more with SPARKATRON_JAVA_OPTS=-Xmx8g, or make the job smaller";
        }
        Throwable root = rootCause(t);
        String msg = firstLine(root.getMessage());
        String name = root.getClass().getSimpleName();
        return msg.isEmpty() ? "failed: " + name : "failed: " + name + ": " + msg;
    }

    /** The first throwable in the cause chain that is the user's to fix, or null. */
    static Throwable userError(Throwable t) {
        Map<Throwable, Boolean> seen = new IdentityHashMap<>();
        for (Throwable c = t; c != null && seen.put(c, true) == null; c = c.getCause()) {
            if (c instanceof VirtualMachineError) {
                return null;
            }
            if (c instanceof IllegalArgumentException || c instanceof DeviceMemoryException || c instanceof FileNotFoundException || c instanceof CharacterCodingException
                    || c instanceof NoSuchFileException || c instanceof AccessDeniedException
                    || (c instanceof FileSystemException f && f.getReason() != null)
                    || (c instanceof java.io.IOException && "Is a directory".equals(c.getMessage()))
                    || c.getClass().getName().equals("org.apache.spark.sql.AnalysisException")) {
                return c;
            }
        }
        return null;
    }

    private static String userMessage(Throwable c) {
        if (c instanceof NoSuchFileException f) {
            return "no such file or directory: " + f.getFile();
        }
        if (c instanceof AccessDeniedException f) {
            return "permission denied: " + f.getFile();
        }
        if (c instanceof FileSystemException f) {
            return f.getFile() + ": " + f.getReason();
        }
        if (c instanceof NumberFormatException && c.getMessage() != null && c.getMessage().startsWith("For input string: ")) {
            return "expected a number, got " + c.getMessage().substring("For input string: ".length());
        }
        if ("Is a directory".equals(c.getMessage())) {
            return "a directory where a file was expected";
        }
        if (c instanceof CharacterCodingException) {
            return "the input is not UTF-8 text (" + c.getClass().getSimpleName() + ")";
        }
        return firstLine(c.getMessage());
    }

    /** The first line of the innermost cause's message (Spark wraps a task's error several times). */
    public static String rootMessage(Throwable t) {
        Throwable root = rootCause(t);
        String msg = firstLine(root.getMessage());
        return msg.isEmpty() ? root.getClass().getSimpleName() : msg;
    }

    private static Throwable rootCause(Throwable t) {
        Map<Throwable, Boolean> seen = new IdentityHashMap<>();
        Throwable c = t;
        while (c.getCause() != null && seen.put(c, true) == null) {
            c = c instanceof UncheckedIOException u ? u.getCause() : c.getCause();
        }
        return c;
    }

    /** The first non-empty line of a message, without the "java.lang.X: " prefix Spark adds to causes. */
    static String firstLine(String msg) {
        if (msg == null) {
            return "";
        }
        for (String l : msg.split("\n")) {
            String s = l.strip();
            if (!s.isEmpty()) {
                return s.replaceFirst("^(?:[a-z][\\w$]*\\.)+[A-Z][\\w$]*(?:Exception|Error): ", "");
            }
        }
        return "";
    }
}
