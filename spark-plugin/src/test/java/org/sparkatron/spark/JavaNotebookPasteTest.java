package org.sparkatron.spark;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import com.fasterxml.jackson.databind.JsonNode;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import jdk.jshell.JShell;
import jdk.jshell.SourceCodeAnalysis;
import jdk.jshell.SourceCodeAnalysis.Completeness;
import org.junit.jupiter.api.Test;

/**
 * notebooks/spark-quickstart.ipynb's code cells paste into {@code jshell}: jshell runs a snippet as soon as the
 * lines typed so far complete one, so a cell must split into the same snippets line by line as it does whole
 * (a continuation line starting with {@code .} after a complete statement would become a broken snippet of its
 * own). Syntax only, nothing runs; the notebook itself is executed in a Java Jupyter kernel by the Python tests
 * (python/tests/test_notebooks.py).
 */
class JavaNotebookPasteTest {
    @Test
    void everyCellSplitsIntoTheSameSnippetsLineByLine() throws Exception {
        JsonNode cells = TrainConfig.JSON.readTree(Files.readString(Path.of("..", "notebooks", "spark-quickstart.ipynb"))).get("cells");
        try (JShell js = JShell.builder().executionEngine("local").build()) {
            SourceCodeAnalysis sca = js.sourceCodeAnalysis();
            int n = 0;
            for (JsonNode cell : cells) {
                if (!cell.get("cell_type").asText().equals("code")) {
                    continue;
                }
                n++;
                StringBuilder src = new StringBuilder();
                cell.get("source").forEach(l -> src.append(l.asText()));
                List<String> whole = snippets(sca, List.of(src.toString()));
                List<String> pasted = snippets(sca, List.of(src.toString().split("\n", -1)));
                assertEquals(whole, pasted, "cell " + n + " splits differently when pasted line by line into jshell");
                assertTrue(!whole.isEmpty(), "cell " + n + " is empty");
            }
            assertTrue(n >= 5, "the notebook has its code cells");
        }
    }

    /** The snippets jshell would run, given the input in pieces (a piece is what arrives before jshell looks). */
    private static List<String> snippets(SourceCodeAnalysis sca, List<String> pieces) {
        List<String> out = new ArrayList<>();
        String pending = "";
        for (String piece : pieces) {
            pending += piece + (pieces.size() > 1 ? "\n" : "");
            while (!pending.isBlank()) {
                SourceCodeAnalysis.CompletionInfo ci = sca.analyzeCompletion(pending);
                if (ci.completeness() == Completeness.EMPTY) {
                    pending = "";
                    break;
                }
                if (ci.completeness() != Completeness.COMPLETE && ci.completeness() != Completeness.COMPLETE_WITH_SEMI) {
                    break; // jshell waits for more lines
                }
                // full-line comments belong to no snippet in jshell's line-by-line reading: compare code only
                String code = ci.source().lines().filter(l -> !l.strip().startsWith("//"))
                        .collect(java.util.stream.Collectors.joining("\n")).strip();
                if (!code.isEmpty()) {
                    out.add(code);
                }
                pending = ci.remaining();
            }
        }
        if (!pending.isBlank()) {
            out.add("INCOMPLETE: " + pending.strip());
        }
        return out;
    }
}
