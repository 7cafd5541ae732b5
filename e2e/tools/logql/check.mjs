// Syntax-check LogQL expressions with Grafana's LogQL grammar
// (@grafana/lezer-logql, Apache-2.0; no Loki code): one expression per
// argument; prints `ok` or `INVALID at <position>` for each; exit 1 if any
// is invalid.
import { parser } from '@grafana/lezer-logql';

let bad = 0;
for (const expr of process.argv.slice(2)) {
  const tree = parser.parse(expr);
  let error = -1;
  tree.iterate({ enter: (n) => { if (n.type.isError && error < 0) error = n.from; } });
  if (error >= 0 || !tree.topNode.firstChild) {
    bad++;
    console.log(`INVALID at ${Math.max(error, 0)}: ${expr}`);
  } else {
    console.log(`ok (${tree.topNode.firstChild.name}): ${expr}`);
  }
}
process.exit(bad ? 1 : 0);
