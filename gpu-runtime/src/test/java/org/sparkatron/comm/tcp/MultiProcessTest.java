package org.sparkatron.comm.tcp;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.io.File;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.ValueSource;
import org.junit.jupiter.api.io.TempDir;

/**
 * Ranks as separate JVM processes meeting through a {@link org.sparkatron.comm.FileRendezvous}, over TCP and
 * with collectives through shared memory (processes of one host).
 */
class MultiProcessTest {
    private static List<Process> launch(Path dir, int size, String mode, String transport) throws Exception {
        String java = Path.of(System.getProperty("java.home"), "bin", "java").toString();
        List<Process> ps = new ArrayList<>();
        for (int r = 0; r < size; r++) {
            ProcessBuilder pb = new ProcessBuilder(java, "-Xmx256m",
                    "-cp", System.getProperty("java.class.path"), CommWorker.class.getName(), dir.toString(),
                    String.valueOf(r), String.valueOf(size), mode, transport);
            pb.redirectErrorStream(true);
            pb.redirectOutput(dir.resolve("out-" + r + ".txt").toFile());
            ps.add(pb.start());
        }
        return ps;
    }

    private static String output(Path dir, int r) throws Exception {
        File f = dir.resolve("out-" + r + ".txt").toFile();
        return f.exists() ? Files.readString(f.toPath(), StandardCharsets.UTF_8) : "";
    }

    private static void waitAll(List<Process> ps) throws Exception {
        for (Process p : ps) {
            if (!p.waitFor(90, TimeUnit.SECONDS)) {
                ps.forEach(Process::destroyForcibly);
                throw new AssertionError("a rank process did not finish in 90 s");
            }
        }
    }

    @ParameterizedTest(name = "{0}")
    @ValueSource(strings = {"tcp", "shm"})
    @Timeout(120)
    void threeProcessesRunEveryCollective(String transport, @TempDir Path dir) throws Exception {
        List<Process> ps = launch(dir, 3, "ok", transport);
        waitAll(ps);
        for (int r = 0; r < 3; r++) {
            assertEquals(0, ps.get(r).exitValue(), "rank " + r + " output:\n" + output(dir, r));
            String ok = "OK rank " + r + (transport.equals("shm") ? " shm" : "") + "\n";
            assertTrue(output(dir, r).contains(ok), output(dir, r));
        }
    }

    @ParameterizedTest(name = "{0}")
    @ValueSource(strings = {"tcp", "shm"})
    @Timeout(120)
    void processKilledMidAllReduceFailsTheSurvivorsNamingIt(String transport, @TempDir Path dir) throws Exception {
        List<Process> ps = launch(dir, 3, "die", transport);
        long start = System.nanoTime();
        waitAll(ps);
        long ms = (System.nanoTime() - start) / 1_000_000L;
        assertEquals(9, ps.get(2).exitValue(), "rank 2 halted itself");
        for (int r = 0; r < 2; r++) {
            String out = output(dir, r);
            assertEquals(3, ps.get(r).exitValue(), "rank " + r + " output:\n" + out);
            assertTrue(out.contains("FAILED rank " + r + " peer 2: "), out);
        }
        // The op timeout is 20 s; the death must be noticed from the dropped connections, well before it.
        assertTrue(ms < 60_000, "took " + ms + " ms");
    }
}
