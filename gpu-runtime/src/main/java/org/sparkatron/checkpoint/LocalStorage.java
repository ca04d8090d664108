package org.sparkatron.checkpoint;

import java.io.BufferedOutputStream;
import java.io.IOException;
import java.io.InputStream;
import java.io.OutputStream;
import java.nio.channels.Channels;
import java.nio.channels.FileChannel;
import java.nio.file.FileAlreadyExistsException;
import java.nio.file.FileVisitResult;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.nio.file.SimpleFileVisitor;
import java.nio.file.StandardCopyOption;
import java.nio.file.StandardOpenOption;
import java.nio.file.attribute.BasicFileAttributes;
import java.util.ArrayList;
import java.util.List;
import java.util.stream.Stream;

/**
 * {@link CheckpointStorage} on the local file system (java.nio). Paths are plain file-system paths or
 * {@code file:} URIs. Files are forced to disk on close and directory renames are atomic moves.
 * Stateless and thread-safe.
 */
public final class LocalStorage implements CheckpointStorage {
    private static Path p(String path) {
        return path.startsWith("file:") ? Paths.get(java.net.URI.create(path)) : Paths.get(path);
    }

    @Override
    public String child(String dir, String name) {
        return p(dir).resolve(name).toString();
    }

    @Override
    public boolean exists(String path) {
        return Files.exists(p(path));
    }

    @Override
    public List<String> list(String dir) throws IOException {
        List<String> out = new ArrayList<>();
        if (!Files.isDirectory(p(dir))) {
            return out;
        }
        try (Stream<Path> s = Files.list(p(dir))) {
            s.forEach(x -> out.add(x.getFileName().toString()));
        }
        return out;
    }

    @Override
    public void mkdirs(String dir) throws IOException {
        Files.createDirectories(p(dir));
    }

    @Override
    public long length(String path) throws IOException {
        return Files.size(p(path));
    }

    @Override
    public OutputStream create(String path) throws IOException {
        FileChannel ch = FileChannel.open(p(path), StandardOpenOption.CREATE, StandardOpenOption.WRITE,
                StandardOpenOption.TRUNCATE_EXISTING);
        return new BufferedOutputStream(Channels.newOutputStream(ch), 1 << 20) {
            @Override
            public void close() throws IOException {
                try {
                    flush();
                    ch.force(true);
                } finally {
                    super.close();
                }
            }
        };
    }

    @Override
    public InputStream open(String path) throws IOException {
        return Files.newInputStream(p(path));
    }

    @Override
    public void rename(String from, String to) throws IOException {
        if (Files.exists(p(to))) {
            throw new FileAlreadyExistsException(to + ": cannot rename " + from + " over an existing entry");
        }
        Files.move(p(from), p(to), StandardCopyOption.ATOMIC_MOVE);
    }

    @Override
    public void delete(String path) throws IOException {
        Path root = p(path);
        if (!Files.exists(root)) {
            return;
        }
        Files.walkFileTree(root, new SimpleFileVisitor<>() {
            @Override
            public FileVisitResult visitFile(Path file, BasicFileAttributes attrs) throws IOException {
                Files.delete(file);
                return FileVisitResult.CONTINUE;
            }

            @Override
            public FileVisitResult postVisitDirectory(Path dir, IOException exc) throws IOException {
                Files.delete(dir);
                return FileVisitResult.CONTINUE;
            }
        });
    }

    @Override
    public Path localFile(String path) {
        return p(path);
    }
}
