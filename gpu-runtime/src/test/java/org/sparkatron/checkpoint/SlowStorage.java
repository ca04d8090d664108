package org.sparkatron.checkpoint;

import java.io.FilterOutputStream;
import java.io.IOException;
import java.io.InputStream;
import java.io.OutputStream;
import java.util.List;
import java.util.concurrent.CountDownLatch;
import java.util.function.Consumer;

/**
 * A local directory seen as remote storage (no local path, so saves stream through {@link #create}), whose
 * shard files are written slowly or held until a latch opens, that can fail the file of one name, and that can
 * hold a rename (a commit): what the asynchronous-save tests need to catch a save in the middle of its write or
 * of its commit.
 */
final class SlowStorage implements CheckpointStorage {
    private final LocalStorage local = new LocalStorage();
    private final long nanosPer64k;
    private final CountDownLatch gate;
    private final String failName;
    private final Consumer<String> onCreate;
    private final Consumer<String> beforeRename;

    /** As {@link #SlowStorage(long, CountDownLatch, String, Consumer, Consumer)} with nothing before a rename. */
    SlowStorage(long nanosPer64k, CountDownLatch gate, String failName, Consumer<String> onCreate) {
        this(nanosPer64k, gate, failName, onCreate, from -> { });
    }

    /**
     * @param nanosPer64k pause after each 64 KiB written to a shard file
     * @param gate shard writes wait for it before their first byte (null: no wait)
     * @param failName a shard file whose name contains this fails with an IOException (null: none)
     * @param onCreate told the path of every shard file as its write begins
     * @param beforeRename told the source path of every rename (a commit) before it happens; it may block
     */
    SlowStorage(long nanosPer64k, CountDownLatch gate, String failName, Consumer<String> onCreate, Consumer<String> beforeRename) {
        this.beforeRename = beforeRename;
        this.nanosPer64k = nanosPer64k;
        this.gate = gate;
        this.failName = failName;
        this.onCreate = onCreate;
    }

    @Override
    public String child(String dir, String name) {
        return local.child(dir, name);
    }

    @Override
    public boolean exists(String path) throws IOException {
        return local.exists(path);
    }

    @Override
    public List<String> list(String dir) throws IOException {
        return local.list(dir);
    }

    @Override
    public void mkdirs(String dir) throws IOException {
        local.mkdirs(dir);
    }

    @Override
    public long length(String path) throws IOException {
        return local.length(path);
    }

    @Override
    public OutputStream create(String path) throws IOException {
        if (!path.endsWith(".safetensors")) {
            return local.create(path);
        }
        onCreate.accept(path);
        if (failName != null && path.contains(failName)) {
            throw new IOException("injected failure writing " + path);
        }
        if (gate != null) {
            try {
                gate.await();
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
                throw new IOException("interrupted", e);
            }
        }
        return new FilterOutputStream(local.create(path)) {
            private long written;

            @Override
            public void write(byte[] b, int off, int len) throws IOException {
                out.write(b, off, len);
                long before = written / 65536;
                written += len;
                for (long k = before; k < written / 65536 && nanosPer64k > 0; k++) {
                    try {
                        Thread.sleep(nanosPer64k / 1_000_000, (int) (nanosPer64k % 1_000_000));
                    } catch (InterruptedException e) {
                        Thread.currentThread().interrupt();
                        throw new IOException("interrupted", e);
                    }
                }
            }
        };
    }

    @Override
    public InputStream open(String path) throws IOException {
        return local.open(path);
    }

    @Override
    public void rename(String from, String to) throws IOException {
        beforeRename.accept(from);
        local.rename(from, to);
    }

    @Override
    public void delete(String path) throws IOException {
        local.delete(path);
    }
}
