#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0
"""Turn the "csv:" lines of gmem_no_direct_map_bench into a CSV, a table and a plot.

The "e2e:" lines (the end-to-end runs) become a second table in bench.txt.

Usage: bench-plot.py RESULTS.KTAP OUTDIR

Reads the benchmark's output from the KTAP the guest wrote (the lines are
indented there), and writes OUTDIR/bench.csv, OUTDIR/bench.txt (a Markdown
table with the targets) and OUTDIR/bench.svg (a plot, no plotting library
needed; text_plot() draws the same plot as text for the cover letter).
Every figure is computed from the CSV; nothing is typed in.
Prints nothing and writes nothing when the benchmark did not run.
"""
import csv
import os
import sys

FIELDS = ['mode', 'mib', 'requests', 'l2_splits', 'l3_splits', 'l2_collapses',
          'l3_collapses', 'flushes', 'secs', 'vs_plain', 'left', 'vm_flushes']
MODES = ['plain', 'per-page', 'blocks', 'cached']
COLOURS = {'plain': '#777777', 'per-page': '#d62728', 'blocks': '#1f77b4',
           'cached': '#2ca02c'}


def typed(row):
    """A row of FIELDS with its figures as numbers (a bench.csv written before
    a column was added lacks it)."""
    for k in FIELDS[1:]:
        if k in row:
            row[k] = float(row[k]) if k in ('secs', 'vs_plain') else int(row[k])
    return row


def prefixed(ktap, prefix, fields):
    """The lines of @ktap that start with @prefix, as dicts of @fields
    (strings); a line with another number of values is skipped."""
    rows = []
    with open(ktap, errors='replace') as f:
        for line in f:
            line = line.strip()
            if not line.startswith(prefix):
                continue
            vals = line[len(prefix):].split(',')
            if len(vals) == len(fields):
                rows.append(dict(zip(fields, vals)))
    return rows


def read(ktap):
    return [typed(r) for r in prefixed(ktap, 'csv: ', FIELDS)]


E2E_FIELDS = ['how', 'from', 'mib', 'plain_secs', 'flag_secs', 'flushes',
              'l2_splits']


def read_e2e(ktap):
    """The "e2e:" lines: the end-to-end runs, plain guest_memfd and the flag."""
    rows = prefixed(ktap, 'e2e: ', E2E_FIELDS)
    for r in rows:
        for k in ('mib', 'flushes', 'l2_splits'):
            r[k] = int(r[k])
        for k in ('plain_secs', 'flag_secs'):
            r[k] = float(r[k])
    return rows


def e2e_table(rows):
    """The end-to-end runs as a Markdown table, with the target."""
    if not rows:
        return ''
    out = ['', 'End to end: a vCPU writes every page of its memory (plain guest_memfd and',
           'the flag in the same boot; "pool": from the pool\'s free blocks).', '',
           '| how | from | MiB | plain s | flag s | x plain | flushes/2MiB | L2/GiB |',
           '| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |']
    for r in rows:
        out.append('| %s | %s | %d | %.3f | %.3f | %.2fx | %.3f | %.1f |' % (
            r['how'], r['from'], r['mib'], r['plain_secs'], r['flag_secs'],
            r['plain_secs'] / r['flag_secs'] if r['flag_secs'] else 0.0,
            r['flushes'] / (r['mib'] / 2), r['l2_splits'] / (r['mib'] / 1024)))
    fresh = [r for r in rows if r['from'] == 'fresh']
    met = [r['how'] for r in fresh if r['plain_secs'] / r['flag_secs'] >= 0.9]
    out.append('')
    out.append('Target >= 0.9x plain from fresh memory: met by %d of %d (%s).' % (
        len(met), len(fresh), ', '.join(met) if met else 'none'))
    return '\n'.join(out) + '\n'


def derived(r):
    gib = r['mib'] / 1024
    splits = r['l2_splits'] + r['l3_splits']
    coll = r['l2_collapses'] + r['l3_collapses']
    return {
        'l2_per_gib': r['l2_splits'] / gib,
        'l3_per_gib': r['l3_splits'] / gib,
        'collapsed': 100.0 * coll / splits if splits else 100.0,
        'flush_per_req': r['flushes'] / r['requests'],
        'mib_s': r['mib'] / r['secs'] if r['secs'] else 0.0,
    }


def largest(rows, mode):
    """The row of `mode` at the largest size, or None if the mode did not run."""
    return max((r for r in rows if r['mode'] == mode), key=lambda r: r['mib'], default=None)


def table(rows):
    out = ['| mode | MiB | level-2 splits/GiB | level-3 splits/GiB | split ranges collapsed after teardown | TLB flushes/request | MiB/s | rate vs plain | pages left removed |',
           '| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |']
    for r in rows:
        d = derived(r)
        out.append('| %s | %d | %.1f | %.1f | %.1f%% | %.3f | %.1f | %.2fx | %d |' % (
            r['mode'], r['mib'], d['l2_per_gib'], d['l3_per_gib'], d['collapsed'],
            d['flush_per_req'], d['mib_s'], r['vs_plain'], r['left']))
    big = largest(rows, 'blocks')
    if big:
        d = derived(big)
        out.append('')
        out.append('Targets, for `blocks` at %d MiB: level-2 splits/GiB = 0: %s (%.1f); '
                   'collapsed >= 99%%: %s (%.1f%%); one flush per request: %s (%.3f); '
                   'rate >= 0.8x plain: %s (%.2fx); pages left = 0: %s (%d).' % (
                       big['mib'],
                       'met' if d['l2_per_gib'] == 0 else 'missed', d['l2_per_gib'],
                       'met' if d['collapsed'] >= 99 else 'missed', d['collapsed'],
                       'met' if d['flush_per_req'] <= 1 else 'missed', d['flush_per_req'],
                       'met' if big['vs_plain'] >= 0.8 else 'missed', big['vs_plain'],
                       'met' if big['left'] == 0 else 'missed', big['left']))
    big = largest(rows, 'cached')
    if big:
        d = derived(big)
        out.append('')
        out.append("From the pool's free blocks, warmed up (`cached`), at %d MiB: rate %.2fx plain "
                   '(>= 0.8x: %s), %.3f TLB flushes/request, %.1f level-2 splits/GiB, '
                   '%d pages left.' % (
                       big['mib'], big['vs_plain'],
                       'met' if big['vs_plain'] >= 0.8 else 'missed',
                       d['flush_per_req'], d['l2_per_gib'], big['left']))
    return '\n'.join(out) + '\n'


def read_csv(path):
    """The rows of a bench.csv this script wrote."""
    with open(path, newline='') as f:
        return [typed(row) for row in csv.DictReader(f)]


def text_plot(rows):
    """The two panels of the SVG plot as text, for a plain-text mail."""
    sizes = sorted({r['mib'] for r in rows})
    by = {(r['mode'], r['mib']): r for r in rows}
    out = ['%-19s %-30s %s' % ('', 'conversion rate, vs plain', 'level-2 splits per GiB'),
           '%-19s %-30s %s' % ('', '(# = 0.1x)', '(one # per digit)')]
    for s in sizes:
        for i, m in enumerate(m for m in MODES if (m, s) in by):
            r = by[(m, s)]
            l2 = derived(r)['l2_per_gib']
            rate = '#' * round(r['vs_plain'] * 10) + ' %.2f' % r['vs_plain']
            splits = '#' * len('%d' % l2) if l2 >= 1 else ''
            out.append(('%-19s %-30s %-6s %.0f' % (
                ('%4d MiB  ' % s if i == 0 else ' ' * 10) + m, rate, splits, l2)).rstrip())
    return '\n'.join(out) + '\n'


def svg(rows):
    """Two panels: level-2 splits per GiB, and conversion rate vs plain, per size."""
    sizes = sorted({r['mib'] for r in rows})
    by = {(r['mode'], r['mib']): r for r in rows}
    W, H, pad, gap = 760, 300, 50, 40
    pw = (W - 2 * pad - gap) / 2
    ph = H - 2 * pad
    parts = ['<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" '
             'font-family="sans-serif" font-size="11">' % (W, H),
             '<rect width="100%" height="100%" fill="white"/>']

    def panel(x0, title, key, fmt):
        vals = [key(by[(m, s)]) for m in MODES for s in sizes if (m, s) in by]
        top = max(vals + [1e-9]) * 1.15
        parts.append('<text x="%.1f" y="%d" font-size="12" font-weight="bold">%s</text>' % (x0, pad - 20, title))
        parts.append('<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="black"/>' % (x0, pad + ph, x0 + pw, pad + ph))
        gw = pw / len(sizes)
        bw = gw / (len(MODES) + 1)
        for i, s in enumerate(sizes):
            for j, m in enumerate(MODES):
                if (m, s) not in by:
                    continue
                v = key(by[(m, s)])
                h = ph * v / top
                x = x0 + i * gw + (j + 0.5) * bw
                parts.append('<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="%s"/>' % (
                    x, pad + ph - h, bw * 0.9, h, COLOURS[m]))
                parts.append('<text x="%.1f" y="%.1f" font-size="9" text-anchor="middle">%s</text>' % (
                    x + bw * 0.45, pad + ph - h - 3, fmt % v))
            parts.append('<text x="%.1f" y="%d" text-anchor="middle">%d MiB</text>' % (
                x0 + (i + 0.5) * gw, pad + ph + 15, s))

    panel(pad, 'direct-map level-2 splits per GiB made private',
          lambda r: derived(r)['l2_per_gib'], '%.0f')
    panel(pad + pw + gap, 'conversion rate, relative to plain guest_memfd',
          lambda r: r['vs_plain'], '%.2f')
    for j, m in enumerate(MODES):
        x = pad + j * 110
        parts.append('<rect x="%d" y="%d" width="10" height="10" fill="%s"/>' % (x, H - 18, COLOURS[m]))
        parts.append('<text x="%d" y="%d">%s</text>' % (x + 14, H - 9, m))
    parts.append('</svg>')
    return '\n'.join(parts) + '\n'


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    rows = read(sys.argv[1])
    if not rows:
        return
    out = sys.argv[2]
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, 'bench.csv'), 'w', newline='') as f:
        w = csv.writer(f)
        w.writerow(FIELDS)
        for r in rows:
            w.writerow([r[k] for k in FIELDS])
    e2e = e2e_table(read_e2e(sys.argv[1]))
    with open(os.path.join(out, 'bench.txt'), 'w') as f:
        f.write(table(rows) + e2e)
    with open(os.path.join(out, 'bench.svg'), 'w') as f:
        f.write(svg(rows))
    sys.stdout.write(table(rows) + e2e)


if __name__ == '__main__':
    main()
