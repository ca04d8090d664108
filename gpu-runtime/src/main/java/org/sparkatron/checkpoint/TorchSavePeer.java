package org.sparkatron.checkpoint;

import java.io.BufferedReader;
import java.io.IOException;
import java.io.InputStreamReader;
import java.io.OutputStream;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import java.util.concurrent.TimeUnit;

/**
 * {@code bench-ckpt}'s peer: {@code torch.save} of a state dict with the given tensors' element counts (fp32, to a file
 * that is fsynced, as our saves are), then {@code torch.load} three times: twice with the file dropped from the page
 * cache by the bench just before ({@link PageCache}, the same eviction and check as for our files), then again from the
 * cache. One
 * {@code /usr/bin/python3} process, one thread, the import of torch outside the timings. Not a library code path.
 */
final class TorchSavePeer {
    private static final String SCRIPT = String.join("\n",
            "import sys, os, time, json",
            "import torch",
            "torch.set_num_threads(1)",
            "sizes = json.loads(sys.argv[1]); path = sys.argv[2]",
            "g = torch.Generator().manual_seed(0)",
            "sd = {'t%d' % i: torch.randn(n, generator=g) for i, n in enumerate(sizes)}",
            "t = time.perf_counter()",
            "with open(path, 'wb') as f:",
            "    torch.save(sd, f); f.flush(); os.fsync(f.fileno())",
            "save = time.perf_counter() - t",
            "print('saved', save, os.path.getsize(path), flush=True)",
            "def load():",
            "    sys.stdin.readline()  # the bench drops the file from the page cache meanwhile",
            "    t = time.perf_counter(); back = torch.load(path); s = time.perf_counter() - t",
            "    assert torch.equal(back['t0'], sd['t0'])",
            "    return s",
            "first = load()",
            "cold = load()",
            "t = time.perf_counter(); back = torch.load(path); warm = time.perf_counter() - t",
            "assert torch.equal(back['t0'], sd['t0'])",
            "print('loaded', first, cold, warm, flush=True)",
            "os.remove(path)");

    /** One round's figures. */
    record Round(double saveS, double loadFirstS, double loadColdS, double loadWarmS, long bytes, int residentAfterEviction) {
    }

    private TorchSavePeer() {
    }

    /** One round, or null when {@code /usr/bin/python3} with torch is not available. */
    static Round round(List<Long> sizes, Path file) throws IOException, InterruptedException {
        if (!Files.isExecutable(Path.of("/usr/bin/python3"))) {
            return null;
        }
        Process p = new ProcessBuilder("/usr/bin/python3", "-c", SCRIPT, sizes.toString(), file.toString())
                .redirectErrorStream(true).start();
        StringBuilder seen = new StringBuilder();
        try (BufferedReader in = new BufferedReader(new InputStreamReader(p.getInputStream(), StandardCharsets.UTF_8));
             OutputStream go = p.getOutputStream()) {
            String[] saved = expect(in, "saved", seen);
            if (saved == null) {
                p.waitFor(60, TimeUnit.SECONDS);
                if (seen.toString().contains("No module named 'torch'")) {
                    return null;
                }
                throw new IOException("the torch peer failed: " + seen.toString().trim());
            }
            int resident = 0;
            for (int i = 0; i < 2; i++) { // before the first load after the save, and before the second
                PageCache.evict(List.of(file));
                resident = Math.max(resident, PageCache.residentSamples(List.of(file)));
                go.write('\n');
                go.flush();
            }
            String[] loaded = expect(in, "loaded", seen);
            if (loaded == null || !p.waitFor(600, TimeUnit.SECONDS) || p.exitValue() != 0) {
                throw new IOException("the torch peer failed: " + seen.toString().trim());
            }
            return new Round(Double.parseDouble(saved[1]), Double.parseDouble(loaded[1]), Double.parseDouble(loaded[2]),
                    Double.parseDouble(loaded[3]), Long.parseLong(saved[2]), resident);
        } finally {
            p.destroy();
        }
    }

    /** The fields of the next output line that starts with {@code word}, or null at the end of the output. */
    private static String[] expect(BufferedReader in, String word, StringBuilder seen) throws IOException {
        for (String line; (line = in.readLine()) != null; ) {
            seen.append(line).append('\n');
            String[] f = line.trim().split("\\s+");
            if (f[0].equals(word)) {
                return f;
            }
        }
        return null;
    }
}
