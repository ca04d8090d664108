package org.sparkatron.data.spark;

import java.util.Iterator;
import java.util.NoSuchElementException;
import org.apache.spark.TaskContext;
import org.apache.spark.api.java.function.MapPartitionsFunction;
import org.apache.spark.sql.Row;
import org.apache.spark.sql.RowFactory;
import org.apache.spark.util.TaskCompletionListener;
import org.sparkatron.data.tokenizer.TextTokenizer;
import org.sparkatron.data.tokenizer.TokenizerSpec;

/**
 * The per-partition body of {@link TokenizeTransformer}: builds one tokenizer per task (not per row),
 * appends a token column to every row, and releases the tokenizer when the task ends. A null text gives
 * a null token column. Runs on executors; one instance per task thread.
 */
final class TokenizeRows implements MapPartitionsFunction<Row, Row> {
    private static final long serialVersionUID = 1L;

    private final TokenizerSpec spec;
    private final int textIndex;
    private final boolean appendEod;

    TokenizeRows(TokenizerSpec spec, int textIndex, boolean appendEod) {
        this.spec = spec;
        this.textIndex = textIndex;
        this.appendEod = appendEod;
    }

    static TextTokenizer taskTokenizer(TokenizerSpec spec) {
        TextTokenizer tok = spec.create();
        TaskContext ctx = TaskContext.get();
        if (ctx != null) {
            ctx.addTaskCompletionListener(new TaskCompletionListener() {
                @Override
                public void onTaskCompletion(TaskContext context) {
                    tok.close();
                }
            });
        }
        return tok;
    }

    @Override
    public Iterator<Row> call(Iterator<Row> rows) {
        TextTokenizer tok = taskTokenizer(spec);
        return new Iterator<>() {
            @Override
            public boolean hasNext() {
                return rows.hasNext();
            }

            @Override
            public Row next() {
                if (!rows.hasNext()) {
                    throw new NoSuchElementException();
                }
                Row r = rows.next();
                Object[] values = new Object[r.length() + 1];
                for (int i = 0; i < r.length(); i++) {
                    values[i] = r.get(i);
                }
                String text = r.isNullAt(textIndex) ? null : r.getString(textIndex);
                // a Scala Seq, the external type Spark's Row deserializer gives: a downstream Row stage may see
                // this value directly when the optimizer removes the serialization between the two stages
                values[r.length()] = text == null ? null
                        : new scala.collection.immutable.ArraySeq.ofInt(appendEod ? tok.encodeDocument(text) : tok.encode(text));
                return RowFactory.create(values);
            }
        };
    }
}
