#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
#
# Copy the figures of the last run ($KP_RUN) into results/ of this
# repository, so that the README and the cover letter can quote files the
# tools wrote: the test summary and the benchmark's CSV, table and plot.
KP_STEP=record
. "$(dirname "$0")/lib/common.sh"

[ -s "$KP_RUN/summary.txt" ] || kp_die "no summary in $KP_RUN (run scripts/kp test first)"
out=$KP_TOP/results
mkdir -p "$out"
cp "$KP_RUN/summary.txt" "$out/summary.txt"
# The debug and KASAN kernels' runs (scripts/kp test runs them after the
# main one): only when they ran after it.
for v in debug kasan; do
	summary=$KP_TREE/run-$v/summary.txt
	if [ -s "$summary" ] && [ "$summary" -nt "$KP_RUN/summary.txt" ]; then
		cp "$summary" "$out/summary-$v.txt"
	else
		rm -f "$out/summary-$v.txt"
	fi
done
for f in bench.csv bench.txt bench.svg; do
	if [ -f "$KP_RUN/$f" ]; then
		cp "$KP_RUN/$f" "$out/$f"
	else
		rm -f "$out/$f"
	fi
done
grep '^# kp: vmstat:' "$KP_RUN/results.ktap" | sed 's/^# kp: vmstat: //' >"$out/vmstat-end.txt"
# The reliability figures of every kernel's last run, into results/ (as
# Markdown, and as numbers for the cover letter) and into the README between
# its two "kp-figures" markers.
python3 "$KP_TOP/scripts/figures.py" "$KP_TREE" "$out/figures.json" >"$out/figures.md" ||
	kp_die "figures.py failed"
python3 - "$KP_TOP/README.md" "$out/figures.md" <<'PY' || kp_die "cannot update the README's figures"
import sys
readme, figs = sys.argv[1], open(sys.argv[2]).read()
text = open(readme).read()
begin, end = '<!-- kp-figures: begin -->\n', '<!-- kp-figures: end -->'
i, j = text.index(begin) + len(begin), text.index(end)
open(readme, 'w').write(text[:i] + figs + text[j:])
PY
kp_say "copied the last run's summary, vmstat and benchmark into $out"
# The cover letter quotes results/: write it again.
"$KP_TOP/scripts/series.sh" export
