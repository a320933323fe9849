// The chart check itself: it must accept what lineChart writes and reject each kind of fault
// it exists to catch, or the experiment tests that rely on it prove nothing.
import { describe, expect, it } from "vitest";
import { lineChart } from "../../services/experiment/charts.ts";
import { chartPoints, chartProblems, parseXml } from "./svg-check.ts";

const good = lineChart({
  title: "A & B <test>",
  xLabel: "x",
  yLabel: "y",
  yRange: [0, 100],
  series: [
    { name: "one", points: [[0, 10], [0.5, 55.5], [1, 90]] },
    { name: "two", points: [[0, 20]] },
  ],
});

describe("chart check", () => {
  it("accepts a chart as lineChart writes it and reads its points back", () => {
    expect(chartProblems(good)).toEqual([]);
    expect(chartPoints(good)).toEqual(new Map([["one", [[0, 10], [0.5, 55.5], [1, 90]]], ["two", [[0, 20]]]]));
  });

  it.each([
    ["an unclosed element", good.replace("</svg>", "")],
    ["crossed tags", good.replace("</title></circle>", "</circle></title>")],
    ["a stray <", good.replace(">A &amp;", "><A &amp;")],
    ["a bare &", good.replace("&amp;", "&")],
    ["an unquoted attribute", good.replace('r="3.5"', "r=3.5")],
    ["a repeated attribute", good.replace('r="3.5"', 'r="3.5" r="4"')],
    ["a second root", good + "<svg/>"],
    ["text after the root", good + "junk"],
  ])("rejects %s as XML", (_, svg) => {
    expect(() => parseXml(svg)).toThrow();
    expect(chartProblems(svg)[0]).toMatch(/^not well-formed XML/);
  });

  it.each([
    ["a NaN coordinate", good.replace(/cy="[\d.]+"/, 'cy="NaN"'), /NaN/],
    ["an infinite polyline point", good.replace(/points="[\d.]+,/, 'points="Infinity,'), /Infinity/],
    ["a point off the canvas", good.replace(/cx="[\d.]+"/, 'cx="-5"'), /outside the canvas/],
    ["a missing namespace", good.replace(' xmlns="http://www.w3.org/2000/svg"', ""), /xmlns/],
    ["a viewBox that disagrees with the size", good.replace('viewBox="0 0 640 400"', 'viewBox="0 0 640"'), /viewBox/],
    ["a non-numeric width", good.replace('width="640"', 'width="wide"'), /width/],
    ["another root element", good.replace("<svg ", "<svgx ").replace("</svg>", "</svgx>"), /not <svg>/],
    ["no data line", good.replace(/<polyline[^>]*\/>/g, ""), /no polyline/],
    ["an empty series", good.replace(/points="[^"]*"/, 'points=""'), /without points/],
  ])("rejects %s", (_, svg, problem) => {
    expect(chartProblems(svg).join("\n")).toMatch(problem);
  });
});
