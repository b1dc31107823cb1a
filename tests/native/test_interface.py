"""The native libraries' interface is declared once (csrc/attnlab_native.h): the ctypes signatures come from
it, the built libraries export exactly what it declares, the C definitions are checked against it, and the
parser refuses prototypes it cannot read faithfully."""

from __future__ import annotations

import ctypes
import re
import shutil
import subprocess

import pytest

from attnlab import native
from attnlab.native import build
from attnlab.native.interface import HEADER, interface, parse_header
from native_cpu import family_runs, needs_gcc

P, I64, I32, F32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int, ctypes.c_float

SMALL = """
#define ATTNLAB_API(family) __attribute__((visibility("default")))
/* a comment naming attnlab_not_a_declaration( is ignored */
enum attnlab_cpu_feature { ATTNLAB_CPU_ONE = 1 << 0, ATTNLAB_CPU_FOUR = 1 << 3 };
ATTNLAB_API(alpha) int attnlab_mixed(const float *x, bf16 *y, int64_t n, int flag, float scale,
                                     const int64_t *const *table);
ATTNLAB_API(beta) void attnlab_nothing(void);
ATTNLAB_API(beta) float attnlab_scalar(int64_t n);
"""


def test_parser_reads_pointers_and_scalars():
    declared = parse_header(SMALL)
    mixed = declared.prototypes["attnlab_mixed"]
    assert mixed.family == "alpha" and mixed.restype is I32
    assert mixed.argtypes == (P, P, I64, I32, F32, P)
    nothing, scalar = declared.prototypes["attnlab_nothing"], declared.prototypes["attnlab_scalar"]
    assert nothing.restype is None and nothing.argtypes == ()
    assert scalar.restype is F32 and scalar.argtypes == (I64,)
    assert [p.name for p in declared.of_family("beta")] == ["attnlab_nothing", "attnlab_scalar"]
    assert declared.features == {"ONE": 1, "FOUR": 8}


def test_a_changed_prototype_changes_the_signature():
    """Text that differs from the C definition in one parameter's type gives other argtypes, which
    test_libraries_are_bound_as_the_header_declares would then find in disagreement with the library."""
    wrong = parse_header(SMALL.replace("int64_t n, int flag", "int n, int flag"))
    assert wrong.prototypes["attnlab_mixed"].argtypes == (P, P, I32, I32, F32, P)
    assert wrong.prototypes["attnlab_mixed"] != parse_header(SMALL).prototypes["attnlab_mixed"]


@pytest.mark.parametrize("text, complaint", [
    ("ATTNLAB_API(a) int attnlab_f(double x);", "double"),
    ("ATTNLAB_API(a) int attnlab_f(bf16 x);", "bf16"),  # a struct-like type by value
    ("ATTNLAB_API(a) int attnlab_f(long n);", "long"),
    ("ATTNLAB_API(a) int attnlab_f(unsigned int n);", "needs a type and a name|unsigned"),
    ("ATTNLAB_API(a) int attnlab_f(int64_t);", "needs a type and a name"),
    ("ATTNLAB_API(a) int attnlab_f(float *);", "needs a type and a name"),
    ("ATTNLAB_API(a) int attnlab_f(int n, );", "needs a type and a name"),
    ("ATTNLAB_API(a) double attnlab_f(int n);", "result"),
    ("ATTNLAB_API(a) int attnlab_f(int (*callback)(int));", "cannot read|needs a type"),
    ("int attnlab_f(int n);", "cannot read the declaration of attnlab_f"),
    ("ATTNLAB_API(a) int attnlab_f(int n);\nATTNLAB_API(b) int attnlab_f(int n);", "declared twice"),
    ("enum e { ATTNLAB_CPU_A = 1 << 2, ATTNLAB_CPU_B = 1 << 2 };", "given twice"),
])
def test_parser_refuses_what_it_cannot_read_faithfully(text, complaint):
    with pytest.raises(ValueError, match=complaint):
        parse_header(text)


def test_the_header_declares_every_family_and_feature():
    declared = interface()
    assert {p.family for p in declared.prototypes.values()} == {*build.FAMILIES, build.PROBE.name}
    used = {f for family in build.FAMILIES.values() for f in family.needs + family.uses}
    assert used <= declared.features.keys() == build.FEATURES.keys()
    assert declared.prototypes["attnlab_attend_docs_bf16"].argtypes == (P,) * 9 + (I64, I32, I32, I32, F32, I32,
                                                                                   I32, P, P, I32)


def _libraries():
    """(family, library) for every family this machine runs, and the probe."""
    probe, why = build.open_library(build.PROBE, build.find_compiler())
    assert probe is not None, why
    libs = [(build.PROBE.name, probe)]
    for family in build.FAMILIES:
        if family_runs(family):
            lib = native.load(family)
            assert lib is not None, native.native_status(family)
            libs.append((family, lib))
    return libs


@needs_gcc
def test_libraries_are_bound_as_the_header_declares():
    declared = interface()
    for family, lib in _libraries():
        if family == build.PROBE.name:
            native.interface.bind(lib, family)
        for proto in declared.of_family(family):
            fn = getattr(lib, proto.name)
            assert tuple(fn.argtypes) == proto.argtypes and fn.restype is proto.restype, proto.name


@needs_gcc
@pytest.mark.skipif(shutil.which("nm") is None, reason="needs nm (binutils)")
def test_libraries_export_exactly_the_declared_functions():
    declared = interface()
    for family, lib in _libraries():
        listing = subprocess.run(["nm", "-D", "--defined-only", lib._name], capture_output=True, text=True,
                                 check=True).stdout
        exported = {line.split()[-1] for line in listing.splitlines() if line.split()[-1].startswith("attnlab_")}
        assert exported == {p.name for p in declared.of_family(family)}, family


def test_each_definition_is_compiled_against_the_header():
    """Every declared function is defined in one source of its family, and that source includes the header
    (directly or through kernels.h), so the compiler compares the two."""
    assert '#include "attnlab_native.h"' in (build.CSRC / "kernels.h").read_text()
    families = {**build.FAMILIES, build.PROBE.name: build.PROBE}
    for proto in interface().prototypes.values():
        definition = re.compile(rf"\b{proto.name}\s*\([^;{{]*\)\s*\{{")
        sources = [s for s in families[proto.family].sources if definition.search((build.CSRC / s).read_text())]
        assert len(sources) == 1, (proto.name, sources)
        text = (build.CSRC / sources[0]).read_text()
        assert '#include "kernels.h"' in text or '#include "attnlab_native.h"' in text, sources[0]


@needs_gcc
def test_the_compiler_rejects_a_definition_that_differs_from_the_header(tmp_path):
    source = tmp_path / "wrong.c"
    source.write_text('#include "attnlab_native.h"\n'
                      "int attnlab_transpose_bf16(const bf16 *src, int rows, int64_t cols, int64_t ss, bf16 *dst,\n"
                      "                           int64_t ds, int nthreads) { return 0; }\n")
    done = subprocess.run(["gcc", "-fsyntax-only", f"-I{HEADER.parent}", str(source)], capture_output=True,
                          text=True)
    assert done.returncode != 0 and "conflicting types" in done.stderr, done.stderr
