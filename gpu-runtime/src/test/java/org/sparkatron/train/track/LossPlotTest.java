package org.sparkatron.train.track;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.io.ByteArrayInputStream;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.List;
import javax.xml.parsers.DocumentBuilderFactory;
import org.junit.jupiter.api.Test;
import org.w3c.dom.Document;
import org.w3c.dom.Element;
import org.w3c.dom.NodeList;

/** The SVG parses as XML, holds each series with its point count, and escapes the title; round axis ticks. */
class LossPlotTest {
    @Test
    void wellFormedSvgWithEverySeries() throws Exception {
        List<LossPlot.Point> steps = new ArrayList<>();
        List<LossPlot.Point> intervals = new ArrayList<>();
        for (int s = 1; s <= 40; s++) {
            steps.add(new LossPlot.Point(s, 4.0 / s));
            if (s % 10 == 0) {
                intervals.add(new LossPlot.Point(s, 4.5 / s));
            }
        }
        String svg = LossPlot.svg("run <a> & b", steps, intervals, List.of(new LossPlot.Point(20, 0.3), new LossPlot.Point(40, Double.NaN)));
        Document d = DocumentBuilderFactory.newInstance().newDocumentBuilder()
                .parse(new ByteArrayInputStream(svg.getBytes(StandardCharsets.UTF_8)));
        NodeList lines = d.getElementsByTagName("polyline");
        String[] seen = new String[lines.getLength()];
        for (int i = 0; i < seen.length; i++) {
            Element e = (Element) lines.item(i);
            seen[i] = e.getAttribute("data-series") + "=" + e.getAttribute("data-points") + "/" + e.getAttribute("points").split(" ").length;
        }
        assertArrayEquals(new String[] {"train-step=40/40", "train-interval=4/4", "valid=1/1"}, seen);
        assertTrue(svg.contains("run &lt;a&gt; &amp; b"));
        String empty = LossPlot.svg("nothing yet", List.of(), List.of(), List.of());
        assertTrue(empty.contains("data-points=\"0\""), empty);
    }

    @Test
    void aLongHistoryIsThinnedAndAveragedPerInterval() {
        java.util.TreeMap<Long, Double> losses = new java.util.TreeMap<>();
        for (long s = 1; s <= 10_000; s++) {
            losses.put(s, 5.0);
        }
        String svg = LossPlot.ofHistory("long", losses, new java.util.TreeMap<>(), 100);
        assertTrue(svg.contains("data-series=\"train-step\" data-points=\"2001\""), "every 5th step and the last");
        assertTrue(svg.contains("data-series=\"train-interval\" data-points=\"100\""), "one mean per 100 steps");
    }

    @Test
    void roundTicks() {
        assertArrayEquals(new double[] {0, 20, 40, 60, 80, 100}, LossPlot.ticks(0, 100), 1e-9);
        assertArrayEquals(new double[] {0.5, 1.0, 1.5, 2.0}, LossPlot.ticks(0.31, 2.2), 1e-9);
    }
}
