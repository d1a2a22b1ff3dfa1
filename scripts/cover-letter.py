#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0
"""Write the cover letter: scripts/cover-letter.in with the figures filled in.

Usage: cover-letter.py TEMPLATE RESULTS_DIR BASE_COMMIT SUBJECTS_FILE DIFFSTAT_FILE

@NR@ is the number of patches, @TESTS@ the test counts of
RESULTS_DIR/summary.txt (per suite, and the final line), @BENCH@ the table
of RESULTS_DIR/bench.txt as plain text, @FIGURES@ the reliability figures
of RESULTS_DIR/figures.md (scripts/figures.py), @SHORTLOG@ the patch subjects,
@DIFFSTAT@ the diffstat, @BASE@ the base commit.  Nothing is typed in: the
figures are those that scripts/kp record copied from a run.
"""
import collections
import os
import sys
import textwrap


def tests(results, name='summary.txt'):
    path = os.path.join(results, name)
    if not os.path.exists(path):
        return '  (no results recorded: run scripts/kp test, then scripts/kp record)'
    counts = collections.OrderedDict()
    final = ''
    for line in open(path):
        line = line.rstrip('\n')
        word = line.split(' ', 1)[0]
        if word in ('PASS', 'FAIL', 'SKIP'):
            name = line.split(' ', 2)[1]
            kind, _, rest = name.partition(':')
            group = kind + ':' + rest.split('/')[0] if kind in ('kunit', 'kvm') else name
            if kind == 'kvm' and rest.startswith('x86/'):
                group = kind + ':' + '/'.join(rest.split('/')[:2])
            c = counts.setdefault(group, collections.Counter())
            c[word] += 1
        elif ' passed, ' in line:
            final = line.strip()
    width = max(len(g) for g in counts) if counts else 0
    out = []
    for g, c in counts.items():
        out.append('  %-*s %4d passed%s%s' % (width, g, c['PASS'],
                                              ', %d FAILED' % c['FAIL'] if c['FAIL'] else '',
                                              ', %d skipped' % c['SKIP'] if c['SKIP'] else ''))
    out.append('')
    out.append('  ' + final)
    return '\n'.join(out)


def bench(results):
    path = os.path.join(results, 'bench.txt')
    if not os.path.exists(path):
        return '  (the benchmark did not run in the recorded run)'
    rows, rest = [], []
    for line in open(path):
        line = line.rstrip('\n')
        if line.startswith('|'):
            cells = [c.strip() for c in line.strip('|').split('|')]
            if all(set(c) <= set('-: ') for c in cells):
                continue
            rows.append(cells)
        elif line.strip():
            rest.append(line.strip())
    short = {'level-2 splits/GiB': 'L2 spl/GiB', 'level-3 splits/GiB': 'L3 spl/GiB',
             'split ranges collapsed after teardown': 'collapsed',
             'TLB flushes/request': 'flush/req', 'rate vs plain': 'vs plain',
             'pages left removed': 'left'}
    rows[0] = [short.get(c, c) for c in rows[0]]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    out = []
    for r in rows:
        out.append('  ' + '  '.join(c.rjust(w) if i else c.ljust(w)
                                     for i, (c, w) in enumerate(zip(r, widths))).rstrip())
    for t in rest:
        t = t.replace('`', '')
        out.append('')
        out.extend(textwrap.wrap(t, 72, initial_indent='  ', subsequent_indent='  '))
    return '\n'.join(out)


def figures(results):
    path = os.path.join(results, 'figures.md')
    if not os.path.exists(path):
        return '  (no figures recorded: run scripts/kp test, then scripts/kp record)'
    rows = []
    for line in open(path):
        if line.startswith('|'):
            cells = [c.strip() for c in line.strip().strip('|').split('|')]
            if not all(set(c) <= set('-: ') for c in cells):
                rows.append(cells)
    head, out = rows[0], []
    for r in rows[1:]:
        out.append('  %s:' % r[0])
        for h, c in zip(head[1:], r[1:]):
            out.extend(textwrap.wrap('%s: %s' % (h, c), 72, initial_indent='   - ',
                                     subsequent_indent='     '))
    return '\n'.join(out)


def main():
    tmpl, results, base, subjects, diffstat = sys.argv[1:6]
    subj = [l.rstrip('\n') for l in open(subjects) if l.strip()]
    shortlog = '\n'.join('  %*d. %s' % (len(str(len(subj))), i + 1, s) for i, s in enumerate(subj))
    text = open(tmpl).read()
    for key, val in (('@NR@', '%02d' % len(subj)), ('@TESTS@', tests(results)),
                     ('@TESTS_DEBUG@', tests(results, 'summary-debug.txt')),
                     ('@BENCH@', bench(results)), ('@FIGURES@', figures(results)),
                     ('@SHORTLOG@', shortlog),
                     ('@DIFFSTAT@', open(diffstat).read().rstrip('\n')),
                     ('@BASE@', base)):
        text = text.replace(key, val)
    sys.stdout.write(text)


if __name__ == '__main__':
    main()
