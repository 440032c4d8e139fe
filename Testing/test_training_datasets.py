"""Dataset readers, layout detection, and splits by subject / z-slab."""

from __future__ import annotations

from pathlib import Path

import pytest

from MedTranslateLib.errors import ConfigError
from MedTranslateLib.training.datasets import (Case, detect_layout, load_cases, read_case_folders,
                                               split_by_subject, zslab_holdout)


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


def test_synthrad2023_and_2025(tmp_path):
    for case in ("1BA001", "1BA002"):
        for name in ("mr", "ct", "mask"):
            touch(tmp_path / "a" / "Task1" / "brain" / case / f"{name}.nii.gz")
    touch(tmp_path / "a" / "Task2" / "pelvis" / "2PA001" / "cbct.nii.gz")
    touch(tmp_path / "a" / "Task2" / "pelvis" / "2PA001" / "ct.nii.gz")
    assert detect_layout(tmp_path / "a") == "synthrad2023"
    cases = load_cases(tmp_path / "a", source="MR", target="CT")
    assert [c.subject_id for c in cases] == ["1BA001", "1BA002"]
    assert cases[0].source_path.name == "mr.nii.gz" and cases[0].mask_path.name == "mask.nii.gz"
    cbct = load_cases(tmp_path / "a", source="CBCT", target="CT")
    assert [c.subject_id for c in cbct] == ["2PA001"] and cbct[0].mask_path is None
    for name in ("mr", "ct", "mask"):
        touch(tmp_path / "b" / "Task1" / "AB" / "1ABA005" / f"{name}.mha")
    assert detect_layout(tmp_path / "b") == "synthrad2025"
    cases = load_cases(tmp_path / "b")
    assert cases[0].source_path.name == "mr.mha" and cases[0].subject_id == "1ABA005"


def test_brats_2021_2023_and_contrast_names(tmp_path):
    for case in ("BraTS2021_00000", "BraTS2021_00002"):
        for c in ("t1", "t1ce", "t2", "flair", "seg"):
            touch(tmp_path / "r21" / case / f"{case}_{c}.nii.gz")
    assert detect_layout(tmp_path / "r21") == "brats2021"
    cases = load_cases(tmp_path / "r21", source="T1C", target="FLAIR")
    assert len(cases) == 2 and cases[0].source_path.name.endswith("_t1ce.nii.gz")
    assert cases[0].target_path.name.endswith("_flair.nii.gz")
    for case in ("BraTS-GLI-00001-000", "BraTS-GLI-00001-001", "BraTS-GLI-00002-000"):
        for c in ("t1n", "t1c", "t2w", "t2f"):
            touch(tmp_path / "r23" / case / f"{case}-{c}.nii.gz")
    assert detect_layout(tmp_path / "r23") == "brats2023"
    cases = load_cases(tmp_path / "r23", source="T1", target="T2")
    assert cases[0].source_path.name.endswith("-t1n.nii.gz") and cases[0].target_path.name.endswith("-t2w.nii.gz")
    # two time points of one patient are one subject
    assert sorted({c.subject_id for c in cases}) == ["BraTS-GLI-00001", "BraTS-GLI-00002"]
    assert load_cases(tmp_path / "r23", source="FLAIR", target="T1C")[0].source_path.name.endswith("-t2f.nii.gz")


def test_ixi_csv_paired_and_unpaired(tmp_path):
    for subject in ("IXI002-Guys-0828", "IXI012-HH-1211"):
        for c in ("T1", "T2", "PD"):
            touch(tmp_path / "ixi" / f"{subject}-{c}.nii.gz")
    touch(tmp_path / "ixi" / "IXI013-HH-1212-T2.nii.gz")  # no PD: skipped
    assert detect_layout(tmp_path / "ixi") == "ixi"
    cases = load_cases(tmp_path / "ixi", source="T2", target="PD")
    assert [c.subject_id for c in cases] == ["IXI002", "IXI012"]

    for case in ("p1", "p2"):
        touch(tmp_path / "gen" / case / "t1.nii.gz")
        touch(tmp_path / "gen" / case / "flair.nii.gz")
    assert detect_layout(tmp_path / "gen") == "paired_folder"
    cases = load_cases(tmp_path / "gen", source="T1", target="FLAIR")
    assert [c.subject_id for c in cases] == ["p1", "p2"]

    csv_path = tmp_path / "list.csv"
    csv_path.write_text("subject,source,target,mask\ns1,gen/p1/t1.nii.gz,gen/p1/flair.nii.gz,\n")
    assert detect_layout(csv_path) == "csv"
    cases = load_cases(csv_path)
    assert cases[0].source_path == tmp_path / "gen" / "p1" / "t1.nii.gz" and cases[0].mask_path is None
    bad = tmp_path / "bad.csv"
    bad.write_text("id,a,b\n")
    with pytest.raises(ConfigError, match="column"):
        load_cases(bad)

    touch(tmp_path / "un" / "mr" / "a.nii.gz")
    touch(tmp_path / "un" / "ct" / "b.nii.gz")
    touch(tmp_path / "un" / "ct" / "c.nii.gz")
    assert detect_layout(tmp_path / "un") == "unpaired"
    cases = load_cases(tmp_path / "un", source="MR", target="CT")
    assert sum(c.source_path is not None for c in cases) == 1
    assert sum(c.target_path is not None for c in cases) == 2


@pytest.mark.parametrize("separator", [",", ";", "\t"])
def test_a_csv_from_a_spreadsheet(tmp_path, separator):
    """'CSV UTF-8' from a spreadsheet: a byte-order mark, ';' in many locales, spaces, accents, empty cells."""
    rows = ["subject, source, target, mask", "José 1, a/t1.nii.gz, a/flair.nii.gz, ", "p2,b/t1.nii.gz,b/fl.nii.gz,"]
    csv_path = tmp_path / "list.csv"
    csv_path.write_bytes(("\ufeff" + "\r\n".join(r.replace(",", separator) for r in rows) + "\r\n").encode("utf-8"))
    cases = load_cases(csv_path)
    assert [c.subject_id for c in cases] == ["José 1", "p2"]
    assert cases[0].source_path == tmp_path / "a" / "t1.nii.gz" and cases[0].mask_path is None
    assert cases[1].target_path == tmp_path / "b" / "fl.nii.gz"
    csv_path.write_bytes("subject,source,target\nJosé,a.nii.gz,b.nii.gz\n".encode("cp1252"))
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_cases(csv_path)


def test_unknown_layout_and_empty(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="layout"):
        detect_layout(tmp_path / "empty")
    with pytest.raises(ConfigError, match="does not exist"):
        load_cases(tmp_path / "missing")
    with pytest.raises(ConfigError, match="Unknown dataset layout"):
        load_cases(tmp_path / "empty", layout="nonsense")


def _cases(n_subjects: int, per_subject: int = 2) -> list[Case]:
    return [Case(f"s{i:02d}", Path(f"s{i}_{j}_mr"), Path(f"s{i}_{j}_ct"), None, f"s{i:02d}_{j}")
            for i in range(n_subjects) for j in range(per_subject)]


def test_split_by_subject_is_disjoint_seeded_and_complete():
    cases = _cases(20)
    split = split_by_subject(cases, val_fraction=0.2, test_fraction=0.1, seed=3)
    train, val, test = (set(split.subjects(k)) for k in ("train", "val", "test"))
    assert not (train & val) and not (train & test) and not (val & test)
    assert len(train | val | test) == 20 and len(val) == 4 and len(test) == 2
    assert len(split.train) + len(split.val) + len(split.test) == len(cases)
    assert split_by_subject(cases, 0.2, 0.1, seed=3).subjects("val") == split.subjects("val")
    assert split_by_subject(cases, 0.2, 0.1, seed=4).subjects("val") != split.subjects("val")
    assert split.description["val"] == split.subjects("val")


def test_split_small_and_explicit():
    two = split_by_subject(_cases(2), val_fraction=0.5, test_fraction=0.0)
    assert len(two.subjects("train")) == 1 and len(two.subjects("val")) == 1
    explicit = split_by_subject(_cases(4), val_subjects=["s01"], test_subjects=["s02"])
    assert explicit.subjects("train") == ["s00", "s03"] and explicit.subjects("test") == ["s02"]
    with pytest.raises(ConfigError, match="unknown subject"):
        split_by_subject(_cases(3), val_subjects=["nobody"])
    with pytest.raises(ConfigError, match="both"):
        split_by_subject(_cases(3), val_subjects=["s00"], test_subjects=["s00"])
    with pytest.raises(ConfigError, match="no subject for training"):
        split_by_subject(_cases(2), train_subjects=[], val_subjects=["s00", "s01"])


def test_zslab_holdout_ranges():
    slabs = zslab_holdout(100, test_fraction=0.2, val_fraction=0.1, gap=5)
    assert slabs["train"] == [0, 60] and slabs["val"] == [65, 75] and slabs["test"] == [80, 100]
    no_val = zslab_holdout(50, test_fraction=0.2, gap=4)
    assert no_val["val"] is None and no_val["train"][1] + 4 == no_val["test"][0] and no_val["test"][1] == 50
    with pytest.raises(ConfigError, match="too thin"):
        zslab_holdout(6, test_fraction=0.5, val_fraction=0.3, gap=4)


@pytest.mark.data
def test_real_data_readers(real_data):
    phantom = load_cases(real_data / "Task1", source="MR", target="CT")
    assert {c.subject_id for c in phantom} >= {"1PA001", "1PA003"}
    assert all(c.mask_path is not None and c.source_path.name == "mr.nii.gz" for c in phantom)
    assert detect_layout(real_data / "Task1") == "synthrad2023"
    brats = load_cases(real_data / "BraTS2023", source="T1", target="FLAIR")
    assert detect_layout(real_data / "BraTS2023") == "brats2023"
    assert {c.case_id for c in brats} == {"BraTS-GLI-00001-000", "AURORA-example", "TCGA-DU-7294", "TCGA-FG-6692"}
    assert all(c.target_path.name.endswith("-t2f.nii.gz") for c in brats)


def test_unpaired_folders_are_detected_beside_other_folders(tmp_path):
    """<root>/mr and <root>/ct with several volumes each used to be taken for case folders (paired_folder) and
    gave "No MR -> CT cases found"; a hidden or extra folder beside them made the layout unrecognisable."""
    for name in ("mr/a.nii.gz", "mr/b.nii.gz", "ct/c.nii.gz", "ct/d.nii.gz", "ct/e.nii.gz",
                 ".ipynb_checkpoints/x.nii.gz", "notes/readme.nii.gz"):
        touch(tmp_path / "un" / name)
    assert detect_layout(tmp_path / "un", "mr", "ct") == "unpaired"
    cases = load_cases(tmp_path / "un", source="MR", target="CT")
    assert sorted(c.name for c in cases if c.source_path) == ["a", "b"]
    assert sorted(c.name for c in cases if c.target_path) == ["c", "d", "e"]
    # case folders holding both modalities stay paired
    for case in ("p1", "p2"):
        touch(tmp_path / "gen" / case / "t1.nii.gz")
        touch(tmp_path / "gen" / case / "flair.nii.gz")
    touch(tmp_path / "gen" / ".cache" / "flair.nii.gz")
    touch(tmp_path / "gen" / ".cache" / "t1.nii.gz")
    assert detect_layout(tmp_path / "gen", "t1", "flair") == "paired_folder"
    assert [c.name for c in load_cases(tmp_path / "gen", source="T1", target="FLAIR")] == ["p1", "p2"]


def test_split_holds_out_only_paired_subjects():
    """Unpaired volumes cannot be evaluated, so they always train; the fractions count paired subjects."""
    unpaired = ([Case(f"mr{i}", Path(f"mr{i}"), None) for i in range(4)]
                + [Case(f"ct{i}", None, Path(f"ct{i}")) for i in range(4)])
    split = split_by_subject(unpaired, val_fraction=0.2, test_fraction=0.2)
    assert len(split.train) == 8 and not split.val and not split.test
    assert split.description["unpaired_subjects_in_train"] == 8
    mixed = _cases(10) + unpaired
    split = split_by_subject(mixed, val_fraction=0.2, test_fraction=0.1, seed=1)
    held_out = split.val + split.test
    assert len(split.subjects("val")) == 2 and len(split.subjects("test")) == 1
    assert all(c.source_path is not None and c.target_path is not None for c in held_out)
    assert {c.subject_id for c in unpaired} <= set(split.subjects("train"))
    with pytest.raises(ConfigError, match="no source/target pair"):
        split_by_subject(mixed, val_subjects=["mr0"])


def test_incomplete_case_folders_are_skipped_with_one_warning(tmp_path):
    """Case folders without the source or the target used to be dropped without a word."""
    root = tmp_path / "Task1"
    for case in ("1PA001", "1PA003"):
        for name in ("mr", "ct", "mask"):
            touch(root / "pelvis" / case / f"{name}.nii.gz")
    touch(root / "pelvis" / "1PA001b" / "mr.nii")  # SynthRAD 2023 sources must be .nii.gz
    touch(root / "pelvis" / "1PA001b" / "ct.nii.gz")
    touch(root / "pelvis" / "1PA003b" / "mr.nii.gz")
    touch(root / "pelvis" / "1PA004" / "ct.nii.gz")  # beside the MR cases: a case without its MR
    for name in ("cbct", "ct"):  # SynthRAD's Task 2 unpacked beside Task 1: not cases of MR -> CT
        touch(tmp_path / "Task1" / "Task2" / "pelvis" / "2PA001" / f"{name}.nii.gz")
    messages: list[str] = []
    cases = load_cases(root, "synthrad2023", warn=messages.append)
    assert [c.subject_id for c in cases] == ["1PA001", "1PA003"]
    assert messages == [f"3 of 5 case folders in {root} skipped: pelvis/1PA001b (has mr.nii, not mr.nii.gz), "
                        "pelvis/1PA003b (no ct), pelvis/1PA004 (no mr)."]
    assert load_cases(root) == cases  # without warn: the same cases, nothing raised
    # paired_folder: any volume suffix, near misses named
    for case, files in {"a": ("t2.nii.gz", "ct.nrrd"), "b": ("t2.txt", "ct.nii.gz"), "c": ("T2.mha", "ct.mha")}.items():
        for name in files:
            touch(tmp_path / "pf" / case / name)
    messages.clear()
    cases = load_cases(tmp_path / "pf", "paired_folder", source_name="t2", target="CT", warn=messages.append)
    assert [c.name for c in cases] == ["a"] and len(messages) == 1
    assert "2 of 3 case folders" in messages[0] and "b (has t2.txt, not t2.nii.gz/.nii/" in messages[0]
    assert "c (has T2.mha, not t2.nii.gz/" in messages[0]
    # nothing complete: the error says why
    touch(tmp_path / "none" / "x" / "mr.nii")
    with pytest.raises(ConfigError, match=r"No MR -> CT cases .* x \(has mr.nii, not mr.nii.gz; no ct\)"):
        load_cases(tmp_path / "none", "synthrad2023", warn=messages.append)


def test_brats_and_ixi_say_which_cases_they_skip(tmp_path):
    for case, contrasts in {"BraTS-GLI-00001-000": ("t1n", "t2f"), "BraTS-GLI-00002-000": ("t1n",),
                            "BraTS-GLI-00003-000": ("t2f", "t2w")}.items():
        for contrast in contrasts:
            touch(tmp_path / "brats" / case / f"{case}-{contrast}.nii.gz")
    touch(tmp_path / "brats" / "BraTS-GLI-00004-000" / "BraTS-GLI-00004-000-t1n.nii")
    touch(tmp_path / "brats" / "BraTS-GLI-00004-000" / "BraTS-GLI-00004-000-t2f.nii.gz")
    messages: list[str] = []
    cases = load_cases(tmp_path / "brats", source="T1", target="FLAIR", warn=messages.append)
    assert [c.name for c in cases] == ["BraTS-GLI-00001-000"]
    assert messages == [f"3 of 4 cases in {tmp_path / 'brats'} skipped: BraTS-GLI-00002-000 (no t2f), "
                        "BraTS-GLI-00003-000 (no t1n), BraTS-GLI-00004-000 (has BraTS-GLI-00004-000-t1n.nii, "
                        "not BraTS-GLI-00004-000-t1n.nii.gz)."]
    for name in ("IXI002-Guys-0828-T2", "IXI002-Guys-0828-PD", "IXI012-HH-1211-T2", "IXI013-HH-1212-PD",
                 "IXI014-HH-1213-MRA"):
        touch(tmp_path / "ixi" / f"{name}.nii.gz")
    messages.clear()
    cases = load_cases(tmp_path / "ixi", source="T2", target="PD", warn=messages.append)
    assert [c.subject_id for c in cases] == ["IXI002"]
    assert messages == [f"2 of 3 subjects in {tmp_path / 'ixi'} skipped: IXI012 (no PD), IXI013 (no T2)."]


def test_the_same_file_as_source_and_target_is_refused(tmp_path):
    """An identity model trained silently: CSV rows with source == target, or two modalities meaning one file."""
    touch(tmp_path / "a" / "mr.nii.gz")
    touch(tmp_path / "b.nii.gz")
    (tmp_path / "link.nii.gz").symlink_to(tmp_path / "a" / "mr.nii.gz")
    csv_path = tmp_path / "list.csv"
    for row in ("s1,a/mr.nii.gz,a/mr.nii.gz", "s1,a/mr.nii.gz,./a/../a/mr.nii.gz", "s1,link.nii.gz,a/mr.nii.gz"):
        csv_path.write_text(f"subject,source,target\ns0,b.nii.gz,a/mr.nii.gz\n{row}\n")
        with pytest.raises(ConfigError, match=f"Subject s1 has the same file as source and target, .*nii.gz.*"
                                              f"its row in {csv_path}"):
            load_cases(csv_path)
    with pytest.raises(ConfigError, match=f"{tmp_path / 'link.nii.gz'} and {tmp_path / 'a' / 'mr.nii.gz'} "
                                          r"\(one file\)"):
        load_cases(csv_path)
    for case in ("BraTS-GLI-00001-000", "BraTS-GLI-00002-000"):
        for contrast in ("t1n", "t2f"):
            touch(tmp_path / "brats" / case / f"{case}-{contrast}.nii.gz")
    for source, target in (("T1", "T1"), ("MR", "T1")):
        with pytest.raises(ConfigError, match=f"Subject BraTS-GLI-00001 \\(case BraTS-GLI-00001-000\\) has the same "
                                              f"file .*-t1n.nii.gz.*{source} and {target} both mean"):
            load_cases(tmp_path / "brats", source=source, target=target)
    touch(tmp_path / "un" / "mr" / "a.nii.gz")
    with pytest.raises(ConfigError, match="source and target folders are one"):
        load_cases(tmp_path / "un", "unpaired", source="MR", target="T1", source_name="mr", target_name="mr")


def test_csv_rows_need_a_subject_and_a_volume(tmp_path):
    csv_path = tmp_path / "list.csv"
    csv_path.write_text("subject,source,target\np1,a.nii.gz,b.nii.gz\n,c.nii.gz,d.nii.gz\n , e.nii.gz,f.nii.gz\n")
    with pytest.raises(ConfigError, match=f"row 3 of {csv_path}: empty subject"):
        load_cases(csv_path)
    csv_path.write_text("subject,source,target\np1,a.nii.gz,b.nii.gz\np2,,\n")
    with pytest.raises(ConfigError, match=f"row 3 of {csv_path}: neither a source nor a target"):
        load_cases(csv_path)


def test_case_folders_of_one_name_are_refused(tmp_path):
    """siteA/case1 and siteB/case1 used to become one subject 'case1' without a word."""
    for site in ("siteA", "siteB"):
        touch(tmp_path / "pf" / site / "case1" / "t1.nii.gz")
        touch(tmp_path / "pf" / site / "case1" / "flair.nii.gz")
    touch(tmp_path / "pf" / "siteB" / "case2" / "t1.nii.gz")
    touch(tmp_path / "pf" / "siteB" / "case2" / "flair.nii.gz")
    with pytest.raises(ConfigError, match="Two case folders .* same case name, 'case1'.*siteA/case1 and "
                                          ".*siteB/case1") as refused:
        load_cases(tmp_path / "pf", "paired_folder", source="T1", target="FLAIR")
    assert 'subject_folder = "parent"' in refused.value.fix  # the parents differ: they may be the subjects
    # a folder of that name that is skipped (no target) does not count
    (tmp_path / "pf" / "siteB" / "case1" / "flair.nii.gz").unlink()
    assert [c.name for c in load_cases(tmp_path / "pf", "paired_folder", source="T1", target="FLAIR")] == [
        "case1", "case2"]


def test_subject_folders_with_fraction_folders_inside(tmp_path):
    """P01/fx1, P01/fx2, P02/fx1 (one folder per patient, one per fraction): subject_folder="parent" makes the
    patient the subject, so a patient's fractions never sit on both sides of a split."""
    for case in ("P01/fx1", "P01/fx2", "P02/fx1", "P03/fx1", "P03/fx2"):
        for name in ("cbct", "ct"):
            touch(tmp_path / "Task2" / "pelvis" / case / f"{name}.nii.gz")
    with pytest.raises(ConfigError, match="same case name, 'fx1'"):
        load_cases(tmp_path, source="CBCT", target="CT")
    cases = load_cases(tmp_path, source="CBCT", target="CT", subject_folder="parent")
    assert [(c.subject_id, c.name) for c in cases] == [("P01", "P01/fx1"), ("P01", "P01/fx2"), ("P02", "P02/fx1"),
                                                       ("P03", "P03/fx1"), ("P03", "P03/fx2")]
    for seed in range(5):
        split = split_by_subject(cases, val_fraction=0.34, test_fraction=0.0, seed=seed)
        assert not set(split.subjects("train")) & set(split.subjects("val"))
        assert sorted(c.name for c in split.train + split.val) == [c.name for c in cases]
    # two sites with a patient folder of one name are refused, not merged into one person
    for name in ("cbct", "ct"):
        touch(tmp_path / "Task2" / "brain" / "P01" / "fx3" / f"{name}.nii.gz")
    with pytest.raises(ConfigError, match="Two subject folders .* same name, 'P01'") as refused:
        load_cases(tmp_path, source="CBCT", target="CT", subject_folder="parent")
    assert "CSV" in refused.value.fix


def test_subject_folder_is_refused_where_it_means_nothing(tmp_path):
    touch(tmp_path / "list.csv").write_text("subject,source,target\np1,a.nii.gz,b.nii.gz\n")
    with pytest.raises(ConfigError, match="subject_folder = 'parent' applies to case folders"):
        load_cases(tmp_path / "list.csv", subject_folder="parent")
    with pytest.raises(ConfigError, match="Unknown subject_folder 'patient'"):
        read_case_folders(tmp_path, "mr", "ct", subject_folder="patient")


@pytest.mark.parametrize("layout", ["auto", "unpaired"])
def test_an_empty_unpaired_folder_is_named(tmp_path, layout):
    """An empty ct/ gave "Cannot recognise the dataset layout" or, later, "Training needs cases with a source and
    cases with a target"."""
    touch(tmp_path / "mr" / "a.nii.gz")
    touch(tmp_path / "ct" / "scan" / "IM0001.dcm")
    touch(tmp_path / "ct" / "notes.txt")
    with pytest.raises(ConfigError, match=f"unpaired target folder {tmp_path / 'ct'} holds no volumes "
                                          r"\(it holds notes.txt, scan/\)"):
        load_cases(tmp_path, layout, source="MR", target="CT")


def test_data_that_is_no_dataset_is_named_for_what_it_is(tmp_path):
    """A volume file, or a folder without volumes, was "does not exist" / "Cannot recognise the dataset layout"."""
    touch(tmp_path / "scan.nii.gz")
    with pytest.raises(ConfigError, match="is a file but not a CSV list of cases"):
        load_cases(tmp_path / "scan.nii.gz")
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    touch(tmp_path / "empty" / "readme.txt")
    with pytest.raises(ConfigError, match="holds no volumes"):
        load_cases(tmp_path / "empty")


@pytest.mark.skipif(not hasattr(__import__("os"), "symlink"), reason="no symbolic links")
def test_linked_case_folders_are_read_and_loops_are_not_followed(tmp_path):
    """A training set of links to case folders held "no volumes" (rglob skipped linked folders)."""
    for case in ("1PA001", "1PA002"):
        for name in ("mr", "ct"):
            touch(tmp_path / "all" / case / f"{name}.nii.gz")
    (tmp_path / "subset" / "P01").mkdir(parents=True)
    (tmp_path / "subset" / "P01" / "fx1").symlink_to(tmp_path / "all" / "1PA001", target_is_directory=True)
    (tmp_path / "subset" / "P01" / "fx2").symlink_to(tmp_path / "all" / "1PA002", target_is_directory=True)
    (tmp_path / "subset" / "P01" / "up").symlink_to(tmp_path / "subset", target_is_directory=True)
    cases = load_cases(tmp_path / "subset", source="MR", target="CT", subject_folder="parent")
    assert [(c.subject_id, c.name) for c in cases] == [("P01", "P01/fx1"), ("P01", "P01/fx2")]
    from MedTranslateLib.io.atomic import files_below

    assert files_below(f"{tmp_path / 'subset'}/") == files_below(tmp_path / "subset")  # "subset/" walked the loop
    assert len(files_below(tmp_path / "subset")) == 4


def test_held_out_cases_are_read_back_with_the_runs_subject_folder(tmp_path):
    """The model benchmark re-reads a card's held-out subjects: with subject_folder="parent" they are patients."""
    from MedTranslateLib.benchmark_heldout import held_out_cases

    for case in ("P01/fx1", "P01/fx2", "P02/fx1"):
        for name in ("mr", "ct"):
            touch(tmp_path / case / f"{name}.nii.gz")
    card = {"id": "my-model", "source_modality": "MR", "target_modality": "CT",
            "training": {"split": {"method": "by subject", "test": ["P01"]},
                         "config": {"layout": "paired_folder", "subject_folder": "parent"}}}
    assert [case.name for case in held_out_cases(card, tmp_path)] == ["P01/fx1", "P01/fx2"]


def test_a_folder_that_cannot_be_read_stops_the_walk_with_its_name(tmp_path, monkeypatch):
    """An unreadable case folder was skipped without a word, so a data set silently lost its cases."""
    import os

    from MedTranslateLib.errors import InputError
    from MedTranslateLib.io.atomic import files_below

    for case in ("1PA001", "1PA002"):
        for name in ("mr", "ct"):
            touch(tmp_path / "data" / case / f"{name}.nii.gz")
    locked = str(tmp_path / "data" / "1PA002")
    real_scandir = os.scandir

    def scandir(path="."):
        if os.fspath(path) == locked:
            raise PermissionError(13, "Permission denied", locked)
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    with pytest.raises(InputError, match="Cannot read the folder .*1PA002: Permission denied"):
        files_below(tmp_path / "data")
    with pytest.raises(InputError, match="1PA002"):
        load_cases(tmp_path / "data", source="MR", target="CT")


@pytest.mark.parametrize("layout", ["synthrad2023", "brats2023", "paired_folder", "unpaired", "csv"])
def test_a_data_path_that_does_not_exist_is_named_as_such_for_every_layout(tmp_path, layout):
    """With a layout given (as in every shipped config), a mistyped data folder was "Cannot read the folder ...: No
    such file or directory. Give this user permission to read it", a fix about permissions."""
    from MedTranslateLib.training.datasets import resolve_layout

    missing = tmp_path / ("cases.csv" if layout == "csv" else "BraTS2032")
    with pytest.raises(ConfigError) as caught:
        resolve_layout(missing, layout, "T2", "FLAIR", "mr", "ct")
    assert caught.value.problem == f"The training data {missing} does not exist."
    assert "permission" not in caught.value.fix
