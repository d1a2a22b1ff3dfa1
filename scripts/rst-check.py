#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0
"""Print what docutils reports for one .rst file (read from stdin), one line
per problem, without line numbers, so that two versions can be compared.

Sphinx's own roles and directives (:doc:, :ref:, toctree, kernel-doc, ...)
are accepted as they are; everything else is plain docutils, which is what
catches malformed tables, bad indentation and unbalanced markup.  This is
not Sphinx (not installed here); it is the part of it that checks the text.
"""
import io
import re
import sys

import docutils.core
from docutils import nodes
from docutils.parsers.rst import Directive, directives, roles

ROLES = ['doc', 'ref', 'c:func', 'c:type', 'c:macro', 'c:data', 'c:member',
         'c:enum', 'c:struct', 'c:union', 'c:expr', 'manpage', 'kbd', 'file',
         'envvar', 'option', 'abbr', 'menuselection', 'numref', 'term',
         'program', 'samp', 'command', 'download']
DIRECTIVES = ['toctree', 'kernel-doc', 'kernel-feat', 'kernel-abi', 'code-block',
              'c:function', 'c:type', 'c:macro', 'c:struct', 'c:union', 'c:enum',
              'c:member', 'c:var', 'only', 'tabularcolumns', 'highlight',
              'literalinclude', 'cssclass', 'flat-table', 'kernel-include',
              'maintainers-include', 'glossary', 'seealso', 'versionadded',
              'versionchanged', 'deprecated', 'index', 'sectionauthor']


def literal_role(name, rawtext, text, lineno, inliner, options=None, content=None):
    return [nodes.literal(rawtext, text)], []


class Ignored(Directive):
    has_content = True
    optional_arguments = 10
    final_argument_whitespace = True
    option_spec = None

    def run(self):
        return []


class AnyOptions(dict):
    def __getitem__(self, key):
        return directives.unchanged


Ignored.option_spec = AnyOptions()

for r in ROLES:
    roles.register_local_role(r, literal_role)
for d in DIRECTIVES:
    directives.register_directive(d, Ignored)

err = io.StringIO()
docutils.core.publish_doctree(sys.stdin.read(), settings_overrides={
    'warning_stream': err, 'report_level': 2, 'halt_level': 5,
    'file_insertion_enabled': False, 'raw_enabled': False})
for line in err.getvalue().splitlines():
    m = re.match(r'^<string>:\d+: \((\w+)/\d\) (.*)$', line)
    if m:
        print('%s: %s' % (m.group(1), m.group(2)))
