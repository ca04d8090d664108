package org.sparkatron.train.track;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assumptions.assumeTrue;

import java.io.OutputStream;
import java.nio.file.Files;
import java.nio.file.Path;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;

/**
 * Event files written by {@link TensorBoardEvents} are read back by TensorBoard's own loader
 * ({@code EventAccumulator} of the pinned {@code tensorboard} package, which checks both CRCs of every record):
 * every tag, step and value (as float32) comes back. The masked CRC32C against the CRC-32C check value.
 */
class TensorBoardEventsTest {
    @TempDir
    Path tmp;

    @Test
    void maskedCrcOfTheStandardCheckString() {
        // CRC-32C("123456789") = 0xE3069283 (RFC 3720's check value); masked: rotate right 15, add 0xa282ead8
        int crc = 0xE3069283;
        assertEquals(((crc >>> 15) | (crc << 17)) + 0xa282ead8, TensorBoardEvents.maskedCrc32c("123456789".getBytes()));
    }

    @Test
    @Timeout(120)
    void tensorBoardReadsTheScalars() throws Exception {
        String why = PythonTool.missing("tensorboard");
        assumeTrue(why == null, why);
        Path dir = tmp.resolve("tb");
        Files.createDirectories(dir);
        try (OutputStream o = Files.newOutputStream(dir.resolve(TensorBoardEvents.fileName(1_700_000_000_000L, "host-1")));
             TensorBoardEvents tb = new TensorBoardEvents(o, 1.7e9)) {
            for (int s = 1; s <= 300; s++) {
                tb.scalar("train/loss", s, 5.0 / s, 1.7e9 + s);
                if (s % 100 == 0) {
                    tb.scalar("valid/loss", s, 6.0 / s, 1.7e9 + s);
                }
            }
        }
        String script = String.join("\n",
                "import sys",
                "from tensorboard.backend.event_processing.event_accumulator import EventAccumulator",
                "ea = EventAccumulator(sys.argv[1], size_guidance={'scalars': 0})",
                "ea.Reload()",
                "for tag in sorted(ea.Tags()['scalars']):",
                "    for e in ea.Scalars(tag):",
                "        print(tag, e.step, repr(e.value))");
        PythonTool.Result r = PythonTool.run(120, "-c", script, dir.toString());
        assertEquals(0, r.code(), r.output());
        var lines = r.output().lines().filter(l -> l.startsWith("train/") || l.startsWith("valid/")).toList();
        assertEquals(303, lines.size(), r.output());
        for (int s = 1; s <= 300; s++) {
            String[] f = lines.get(s - 1).split(" ");
            assertEquals("train/loss", f[0]);
            assertEquals(s, Integer.parseInt(f[1]));
            assertEquals((float) (5.0 / s), Float.parseFloat(f[2]), 0f);
        }
        String[] v = lines.get(302).split(" ");
        assertEquals("valid/loss", v[0]);
        assertEquals(300, Integer.parseInt(v[1]));
        assertEquals((float) (6.0 / 300), Float.parseFloat(v[2]), 0f);
    }
}
