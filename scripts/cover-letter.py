#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0
"""Write the cover letter: scripts/cover-letter.in with the figures filled in.

Usage: cover-letter.py TEMPLATE RESULTS_DIR BASE_COMMIT SUBJECTS_FILE DIFFSTAT_FILE BASE_INFO
       [BOUNDARY_DIR]

@NR@ is the number of patches, @TESTS@ the test counts of the summaries of
RESULTS_DIR (per suite and kernel, and the totals), @BENCH@ the table of
RESULTS_DIR/bench.txt as plain text, @PLOT@ the plot of bench.csv as text,
@FIGURES@ the reliability figures of RESULTS_DIR/figures.json
(scripts/figures.py) per kernel, @SHORTLOG@ the patch subjects,
@DIFFSTAT@ the diffstat, @BASE@ the base commit, @BASEPARA@ a paragraph
naming the base tree (from BASE_INFO, which scripts/kp base writes),
@RUSTPARA@ what is in Rust and what in C, counted in the copies of the
component, its header and the abstraction in BOUNDARY_DIR.
Nothing is typed in: the figures are those that scripts/kp record copied
from a run.
"""
import collections
import importlib.util
import json
import os
import sys
import textwrap

HERE = os.path.dirname(os.path.abspath(__file__))
spec = importlib.util.spec_from_file_location('bench_plot', os.path.join(HERE, 'bench-plot.py'))
bench_plot = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench_plot)


KERNELS = [('summary.txt', 'test'), ('summary-debug.txt', 'debug'), ('summary-kasan.txt', 'KASAN')]


def counts(path):
    """Per group of tests (a KUnit suite, a selftest), the PASS, FAIL and SKIP lines."""
    groups = collections.OrderedDict()
    for line in open(path):
        word = line.split(' ', 1)[0]
        if word not in ('PASS', 'FAIL', 'SKIP'):
            continue
        name = line.split(' ', 2)[1].rstrip('\n')
        kind, _, rest = name.partition(':')
        # A KUnit suite, a selftest (kvm:..., mm:memfd_secret) or a check
        # of the run (kp:console-clean).
        group = kind + ':' + rest.split('/')[0] if rest else name
        if kind == 'kvm' and rest.startswith('x86/'):
            group = kind + ':' + '/'.join(rest.split('/')[:2])
        # A test the kselftest runner ran: kselftest:runner[,...]/DIR:TEST/...
        if kind == 'kselftest' and len(rest.split('/')) > 1:
            group = rest.split('/')[1] + ' (runner)'
        groups.setdefault(group, collections.Counter())[word] += 1
    return groups


def table(head, rows):
    """Rows of cells as text: the first column left-aligned, the others right-aligned."""
    rows = [head] + rows
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    return '\n'.join(('  ' + '  '.join(c.rjust(w) if i else c.ljust(w)
                                       for i, (c, w) in enumerate(zip(r, widths)))).rstrip()
                      for r in rows)


def tests(results):
    """The tests passed per group and kernel, and the totals, from the summaries."""
    runs = [(name, counts(os.path.join(results, f))) for f, name in KERNELS
            if os.path.exists(os.path.join(results, f))]
    if not runs:
        return '  (no results recorded: run scripts/kp test, then scripts/kp record)'
    groups = []
    for _, c in runs:
        groups += [g for g in c if g not in groups]

    def cell(c):
        if not c:
            return '-'
        return '%d%s%s' % (c['PASS'], ' +%d FAILED' % c['FAIL'] if c['FAIL'] else '',
                           ' +%d skipped' % c['SKIP'] if c['SKIP'] else '')
    rows = [[g] + [cell(c.get(g)) for _, c in runs] for g in groups]
    for word, label in (('PASS', 'passed'), ('FAIL', 'failed'), ('SKIP', 'skipped')):
        rows.append([label] + [str(sum(x[word] for x in c.values())) for _, c in runs])
    rows.insert(len(groups), [''] * (len(runs) + 1))
    return table(['tests passed'] + [name for name, _ in runs], rows)


def bench(results):
    path = os.path.join(results, 'bench.txt')
    if not os.path.exists(path):
        return '  (the benchmark did not run in the recorded run)'
    # The conversions' table and its text, then (bench-plot.py's e2e_table())
    # the end-to-end runs from the line that starts "End to end".
    lines = open(path).read().splitlines()
    cut = next((i for i, line in enumerate(lines) if line.startswith('End to end')),
               len(lines))
    lines, e2e = lines[:cut], lines[cut:]
    rows, rest = [], []
    for line in lines:
        if line.startswith('|'):
            cells = [c.strip() for c in line.strip('|').split('|')]
            if all(set(c) <= set('-: ') for c in cells):
                continue
            rows.append(cells)
        elif line.strip():
            rest.append(line.strip())
    short = {'level-2 splits/GiB': 'L2/GiB', 'level-3 splits/GiB': 'L3/GiB',
             'split ranges collapsed after teardown': 'coll.',
             'TLB flushes/request': 'fl/req', 'rate vs plain': 'x plain',
             'pages left removed': 'left'}
    out = [table([short.get(c, c) for c in rows[0]], rows[1:])]
    out.append('')
    out.extend(textwrap.wrap(
        'L2/GiB, L3/GiB: 2M and 1G direct-map mappings split per GiB converted; '
        'coll.: split ranges collapsed again after teardown; fl/req: TLB flushes per '
        'request; x plain: rate relative to plain; left: pages left out of the direct map.',
        72, initial_indent='  ', subsequent_indent='  '))
    for t in rest:
        t = t.replace('`', '')
        out.append('')
        out.extend(textwrap.wrap(t, 72, initial_indent='  ', subsequent_indent='  '))
    if e2e:
        cells = [[c.strip() for c in line.strip('|').split('|')]
                 for line in e2e if line.startswith('|')]
        cells = [c for c in cells if not all(set(x) <= set('-: ') for x in c)]
        text = [line.strip() for line in e2e if line.strip() and not line.startswith('|')]
        intro = [t for t in text if not t.startswith('Target')]
        out.append('')
        out.extend(textwrap.wrap(' '.join(intro), 72))
        out.append('')
        out.append(table(cells[0], cells[1:]))
        for t in text[len(intro):]:
            out.append('')
            out.extend(textwrap.wrap(t, 72, initial_indent='  ', subsequent_indent='  '))
    return '\n'.join(out)


def figures(results):
    """The reliability figures per kernel, from results/figures.json (scripts/figures.py)."""
    path = os.path.join(results, 'figures.json')
    if not os.path.exists(path):
        return '  (no figures recorded: run scripts/kp test, then scripts/kp record)'
    runs = json.load(open(path))
    lines = [
        ('console reports', lambda r: r['splats']),
        ('fail-nth: steps failed, in %s cases' % '/'.join(
            sorted({str(r['nth']['cases']) for r in runs if r['nth']})),
         lambda n: n['nth']['steps']),
        ('  calls failed with ENOMEM', lambda r: r['nth']['enomem']),
        ('  failures absorbed', lambda r: r['nth']['absorbed']),
        ('    -ENOMEM to the guest', lambda r: r['nth']['guest']),
        ('  free pages, end vs start',
         lambda r: '%+d..%+d' % (r['nth']['free_min'], r['nth']['free_max'])),
        ('bad input: rows, exact error each', lambda r: r['bad']),
        ('stress: seconds run', lambda r: '+'.join(map(str, r['stress']['secs']))),
        ('  conversions', lambda r: r['stress']['conversions']),
        ('  guest writes', lambda r: r['stress']['writes']),
        ('  memory-fault exits', lambda r: r['stress']['exits']),
        ('  punches', lambda r: r['stress']['punches']),
        ('  fallocates (ENOMEM)', lambda r: '%d (%d)' % (r['stress']['fallocates'],
                                                           r['stress']['enomem'])),
        ('  pages removed', lambda r: r['stress']['removed']),
        ('  pages left removed', lambda r: r['stress']['left']),
    ]

    def cell(f, r):
        try:
            return str(f(r))
        except TypeError:
            return 'not run'
    rows = [[label] + [cell(f, r) for r in runs] for label, f in lines]
    # The stress's figures are the last rows: one row when no run ran it.
    first = [row[0] for row in rows].index('stress: seconds run')
    if all(c == 'not run' for row in rows[first:] for c in row[1:]):
        rows = rows[:first] + [['stress'] + ['not run'] * len(runs)]
    when = ', '.join('%s %s' % (r['kernel'], r['when']) for r in runs)
    release = ', '.join(sorted({r['release'] for r in runs}))
    return (table([''] + [r['kernel'].split()[0] for r in runs], rows) + '\n\n' +
            '\n'.join(textwrap.wrap('(%s; runs of %s)' % (release, when), 72,
                                    initial_indent='  ', subsequent_indent='  ')))


def plot(results):
    """The benchmark's plot as text (bench-plot.py), from results/bench.csv."""
    path = os.path.join(results, 'bench.csv')
    if not os.path.exists(path):
        return '  (the benchmark did not run in the recorded run)'
    return textwrap.indent(bench_plot.text_plot(bench_plot.read_csv(path)).rstrip('\n'), '  ')


def base_paragraph(base_info):
    info = dict(l.rstrip('\n').split('=', 1) for l in open(base_info) if '=' in l)
    if info.get('source') == 'debian':
        tree = "Linux %s (Debian's %s, %s)" % (info['version'], info['package'],
                                              info['deb_version'])
        commit = ('the commit the workbench\'s "kp base" makes of that tree '
                  '(fixed author and date), not a commit of a public repository')
    else:
        tree = 'Linux %s (%s)' % (info['version'], info['source'])
        commit = 'that tree\'s HEAD'
    return textwrap.fill('The series applies to %s, where it was built and tested.  '
                         'The base-commit below is %s.' % (tree, commit), 72)


def rust_paragraph(boundary):
    """What is in Rust and what stays in C, with the boundary counted in BOUNDARY's copies of
    virt/kvm/protmem.rs, include/linux/kvm_protmem.h and rust/kernel/mm/{direct_map,filemap,
    mempolicy}.rs."""
    def read(name):
        return open(os.path.join(boundary, name)).read()

    def nlines(name):
        return len(read(name).splitlines())

    component, header = read('protmem.rs'), read('kvm_protmem.h')
    # The declarations of the #ifdef CONFIG_KVM_PROTMEM branch: one a function.
    decls = header.split('#ifdef CONFIG_KVM_PROTMEM', 1)[1].split('#else', 1)[0]
    funcs = [l for l in decls.splitlines() if '(' in l and not l.startswith((' ', '\t', '/*', ' *'))]
    in_rust = sum(1 for l in component.splitlines() if 'pub unsafe extern "C" fn' in l)
    unsafe = sum(1 for l in component.splitlines() if 'unsafe' in l)
    return textwrap.fill(
        'In Rust: the KVM component (virt/kvm/protmem.rs, %d lines), which decides what a '
        'request takes from the pool, takes it through one batch, charges it, flushes once and '
        'adds the pages to the page cache; and the kernel crate\'s abstractions it is written '
        'on: the direct-map API and its pool (rust/kernel/mm/direct_map.rs, %d lines), whose '
        'types make "removed and flushed", "charged once" and "added to a page cache once" hold '
        'by construction; a file\'s page cache and memory policy (rust/kernel/mm/filemap.rs '
        'and mempolicy.rs, %d and %d lines); and ForeignAtomic, for the VM\'s stats.  In C: the '
        'direct map itself and the pool (mm/, with secretmem as a second user and the page '
        'allocator\'s free path), and guest_memfd.c, which owns the file, its locks and its '
        'page cache.  Why this split: what stays in C is called by other C code (the page '
        'allocator frees into the pool, secretmem uses it, the rest of KVM calls '
        'guest_memfd.c), while the component is the policy whose rules (flush before use, '
        'charge once, add once, give back what was not used) the kernel crate\'s types can '
        'enforce.  The boundary is one header, include/linux/kvm_protmem.h, which '
        'bindings_helper.h includes: %d functions, %s implemented in Rust and called by '
        'guest_memfd.c; the component calls no KVM function.  It has %d lines with "unsafe" '
        '(grep -c unsafe): the %d entry points, each a signature and one unsafe block where the '
        'C caller\'s promises become typed references.'
        % (len(component.splitlines()), nlines('direct_map.rs'), nlines('filemap.rs'),
           nlines('mempolicy.rs'), len(funcs),
           'all' if in_rust == len(funcs) else '%d of them' % in_rust, unsafe, in_rust), 72)


def main():
    tmpl, results, base, subjects, diffstat, base_info = sys.argv[1:7]
    boundary = sys.argv[7] if len(sys.argv) > 7 else None
    subj = [l.rstrip('\n') for l in open(subjects) if l.strip()]
    shortlog = '\n'.join('  %*d. %s' % (len(str(len(subj))), i + 1, s) for i, s in enumerate(subj))
    text = open(tmpl).read()
    for key, val in (('@NR@', '%02d' % len(subj)), ('@TESTS@', tests(results)),
                     ('@BENCH@', bench(results)), ('@PLOT@', plot(results)),
                     ('@FIGURES@', figures(results)),
                     ('@SHORTLOG@', shortlog),
                     ('@DIFFSTAT@', open(diffstat).read().rstrip('\n')),
                     ('@BASEPARA@', base_paragraph(base_info)),
                     ('@RUSTPARA@', rust_paragraph(boundary) if boundary else ''),
                     ('@BASE@', base)):
        text = text.replace(key, val)
    sys.stdout.write(text)


if __name__ == '__main__':
    main()
