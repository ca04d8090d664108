package org.sparkatron.train.track;

import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.TimeUnit;

/**
 * The Python that tests check our files with: {@code $SPARKATRON_PYTHON}, else {@code python3} on the PATH.
 * .ci/run installs the pinned packages (.ci/requirements-test.txt); where one is missing the tests skip and
 * say which.
 */
final class PythonTool {
    private PythonTool() {
    }

    static String python() {
        String p = System.getenv("SPARKATRON_PYTHON");
        return p == null || p.isBlank() ? "python3" : p;
    }

    /** Null when {@code module} imports, else why not (for a skip message). */
    static String missing(String module) {
        try {
            Result r = run(60, "-c", "import " + module);
            return r.code == 0 ? null : "Python package '" + module + "' is not installed for " + python()
                    + " (pip install -r .ci/requirements-test.txt): " + r.output.strip();
        } catch (IOException e) {
            return "no " + python() + " to check with: " + e.getMessage();
        }
    }

    record Result(int code, String output) {
    }

    static Result run(int timeoutS, String... args) throws IOException {
        List<String> cmd = new ArrayList<>();
        cmd.add(python());
        cmd.addAll(List.of(args));
        Process p = new ProcessBuilder(cmd).redirectErrorStream(true).start();
        try {
            if (!p.waitFor(timeoutS, TimeUnit.SECONDS)) {
                p.destroyForcibly();
                throw new IOException(cmd + " did not finish in " + timeoutS + " s");
            }
        } catch (InterruptedException e) {
            p.destroyForcibly();
            Thread.currentThread().interrupt();
            throw new IOException("interrupted", e);
        }
        return new Result(p.exitValue(), new String(p.getInputStream().readAllBytes(), StandardCharsets.UTF_8));
    }
}
