package org.sparkatron.cli;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.io.PrintStream;
import java.io.UncheckedIOException;
import java.nio.charset.MalformedInputException;
import java.nio.charset.StandardCharsets;
import java.nio.file.AccessDeniedException;
import java.nio.file.NoSuchFileException;
import java.util.ArrayList;
import java.util.List;
import org.junit.jupiter.api.Test;
import org.sparkatron.device.DeviceMemoryException;

/** The one shared start and end of every command: help, verbose, the one line and the exit status. */
class CliTest {
    record Outcome(int status, String out, String err, List<String> args) {
    }

    static Outcome run(Cli.Body body, String... argv) {
        ByteArrayOutputStream out = new ByteArrayOutputStream();
        ByteArrayOutputStream err = new ByteArrayOutputStream();
        List<String> seen = new ArrayList<>();
        int status = Cli.run("cmd", "usage: ./sparkatron cmd [--x N]", argv, new PrintStream(out, true, StandardCharsets.UTF_8),
                new PrintStream(err, true, StandardCharsets.UTF_8), args -> {
                    seen.addAll(List.of(args));
                    return body.run(args);
                });
        return new Outcome(status, out.toString(StandardCharsets.UTF_8), err.toString(StandardCharsets.UTF_8), seen);
    }

    /** A Spark-like failure: the user's error wrapped twice, with Spark's "java.lang.X: " prefix and a trace in the text. */
    static Exception sparkJobFailure(Throwable cause) {
        return new RuntimeException("Job aborted due to stage failure: Task 0 in stage 3.0 failed 4 times, most recent failure: "
                + "Lost task 0.3\n\tat org.apache.spark.scheduler.DAGScheduler.failJobAndIndependentStages", new IllegalStateException(
                        "java.lang.IllegalStateException: task failed\n\tat x", cause));
    }

    @Test
    void helpPrintsTheUsageAndRunsNothing() {
        Outcome o = run(args -> {
            throw new AssertionError("must not run");
        }, "cmd", "--x", "1", "--help");
        assertEquals(Cli.OK, o.status());
        assertEquals("usage: ./sparkatron cmd [--x N]\n", o.out());
        assertEquals(0, run(args -> Cli.FAILURE, "-h").status());
    }

    @Test
    void theCommandNameAndVerboseAreNotTheCommandsArguments() {
        Outcome o = run(args -> Cli.OK, "cmd", "--verbose", "--x", "1", "--verbose");
        assertEquals(List.of("--x", "1"), o.args());
        assertEquals(List.of("--x", "1"), run(args -> Cli.OK, "--x", "1").args(), "spark-submit passes no command name");
    }

    @Test
    void usersErrorsAreOneLineWithStatus2() {
        Object[][] cases = {
            {new Cli.UsageException("unknown option --y"), "sparkatron cmd: unknown option --y"},
            {new IllegalArgumentException("config key 'dp' must be >= 1, got 0"), "sparkatron cmd: config key 'dp' must be >= 1, got 0"},
            {new NoSuchFileException("job.json"), "sparkatron cmd: no such file or directory: job.json"},
            {new AccessDeniedException("/root/x"), "sparkatron cmd: permission denied: /root/x"},
            {new UncheckedIOException(new MalformedInputException(1)), "sparkatron cmd: the input is not UTF-8 text (MalformedInputException)"},
            {new IOException("Is a directory"), "sparkatron cmd: a directory where a file was expected"},
            {new NumberFormatException("For input string: \"many\""), "sparkatron cmd: expected a number, got \"many\""},
            {new DeviceMemoryException("cpu", "parameters", 1L << 40, 1L << 30), "sparkatron cmd: cpu: parameters needs"},
            {sparkJobFailure(new IllegalArgumentException("token id 70000 is outside the vocabulary of 50257")),
                "sparkatron cmd: token id 70000 is outside the vocabulary of 50257"},
        };
        for (Object[] c : cases) {
            Throwable t = (Throwable) c[0];
            Outcome o = run(args -> {
                throw (Exception) (t instanceof Exception e ? e : new RuntimeException(t));
            });
            assertEquals(Cli.INPUT, o.status(), t.toString());
            assertEquals(1, o.err().lines().count(), o.err());
            assertTrue(o.err().startsWith((String) c[1]), o.err());
        }
    }

    @Test
    void failuresAreOneLineWithTheRootCauseAndStatus1() {
        Outcome o = run(args -> {
            throw sparkJobFailure(new java.net.ConnectException("Connection refused"));
        });
        assertEquals(Cli.FAILURE, o.status());
        assertEquals("sparkatron cmd: failed: ConnectException: Connection refused (--verbose shows the stack trace)\n", o.err());
        o = run(args -> {
            throw new OutOfMemoryError("Java heap space");
        });
        assertEquals(Cli.FAILURE, o.status());
        assertTrue(o.err().startsWith("sparkatron cmd: out of memory (Java heap space); give the JVM more with SPARKATRON_JAVA_OPTS"), o.err());
        assertEquals(Cli.FAILURE, run(args -> Cli.FAILURE).status(), "a command's own failure");
    }

    @Test
    void verboseAddsTheStackTrace() {
        Outcome o = run(args -> {
            throw sparkJobFailure(new java.net.ConnectException("Connection refused"));
        }, "--verbose");
        assertTrue(o.err().startsWith("sparkatron cmd: failed: ConnectException: Connection refused\njava.lang.RuntimeException: Job aborted"),
                o.err());
        assertTrue(o.err().contains("Caused by: java.net.ConnectException: Connection refused"), o.err());
    }
}
