package org.sparkatron.data.spark;

import java.io.IOException;
import java.io.Serializable;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.Iterator;
import java.util.List;
import java.util.Map;
import org.apache.spark.api.java.function.Function2;
import org.apache.spark.sql.Row;
import org.apache.spark.util.LongAccumulator;
import org.sparkatron.data.indexed.IndexedDType;
import org.sparkatron.data.indexed.IndexedDatasetWriter;
import org.sparkatron.data.io.DataPaths;
import org.sparkatron.data.tokenizer.TextTokenizer;
import org.sparkatron.data.tokenizer.TokenizerSpec;

/**
 * The task body of {@code prepare}: tokenizes one partition's texts with one tokenizer and streams them
 * into one Megatron shard {@code OUTPUT/shard-NNNNN.{bin,idx}} (one document per row, end-of-document
 * appended). As in Megatron's tools/preprocess_data.py, an empty text is a document without a sequence
 * (no end-of-document token); null texts are skipped; an empty partition writes no shard. A retried task rewrites its
 * shard from the start, so the result does not depend on retries. Runs on executors.
 */
final class ShardWriter implements Function2<Integer, Iterator<Row>, Iterator<ShardWriter.Shard>> {
    private static final long serialVersionUID = 1L;

    /** What one task wrote. */
    record Shard(int partition, String prefix, long documents, long tokens, long textBytes) implements Serializable {
    }

    private final TokenizerSpec spec;
    private final String output;
    private final IndexedDType dtype;
    private final Map<String, String> hadoopConf;
    private final LongAccumulator docs;
    private final LongAccumulator tokens;
    private final LongAccumulator bytes;
    private final LongAccumulator empty;

    ShardWriter(TokenizerSpec spec, String output, IndexedDType dtype, Map<String, String> hadoopConf,
                LongAccumulator docs, LongAccumulator tokens, LongAccumulator bytes, LongAccumulator empty) {
        this.spec = spec;
        this.output = output;
        this.dtype = dtype;
        this.hadoopConf = hadoopConf;
        this.docs = docs;
        this.tokens = tokens;
        this.bytes = bytes;
        this.empty = empty;
    }

    static String shardName(int partition) {
        return String.format("shard-%05d", partition);
    }

    @Override
    public Iterator<Shard> call(Integer partition, Iterator<Row> rows) throws IOException {
        TextTokenizer tok = TokenizeRows.taskTokenizer(spec);
        String name = shardName(partition);
        IndexedDatasetWriter w = null;
        long textBytes = 0;
        try {
            while (rows.hasNext()) {
                Row r = rows.next();
                if (r.isNullAt(0)) { // counted and reported, not silently lost
                    empty.add(1);
                    continue;
                }
                String text = r.getString(0);
                if (w == null) {
                    w = new IndexedDatasetWriter(DataPaths.child(output, name), dtype, hadoopConf);
                }
                int[] ids = tok.encodeDocument(text);
                if (ids.length == 0) {
                    w.endDocument(); // Megatron's preprocess_data: an empty text is a document with no sequence
                } else {
                    w.addDocument(ids);
                }
                long b = text.getBytes(StandardCharsets.UTF_8).length;
                textBytes += b;
                docs.add(1);
                bytes.add(b);
            }
        } finally {
            if (w != null) {
                w.close();
            }
        }
        List<Shard> out = new ArrayList<>();
        if (w != null) {
            tokens.add(w.tokens());
            out.add(new Shard(partition, name, w.documents(), w.tokens(), textBytes));
        }
        return out.iterator();
    }
}
