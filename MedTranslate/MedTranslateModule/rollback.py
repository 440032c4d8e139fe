"""All-or-nothing loading of a result into nodes that already exist: :class:`NodeSnapshot` records what a run may
change on a volume node (voxels, grid, transform, name, attributes, node references, display nodes, place in the
subject hierarchy) and puts all of it back when loading the result fails part-way.

The voxels are not copied: the loading gives the node a new ``vtkImageData`` (see ``TranslationLogic._store``) and
the snapshot keeps the old one, so a rollback costs no memory and no time.
"""

from __future__ import annotations

import logging
from typing import Any

#: Roles kept by other means: the parent transform (its own setter observes it) and display / storage nodes.
_ROLES_KEPT_APART = ("display", "storage", "transform")


class NodeSnapshot:
    """What a run may change on ``node``; :meth:`restore` puts it back (nodes it made since are removed)."""

    def __init__(self, scene: Any, node: Any) -> None:
        import vtk

        self.scene, self.node = scene, node
        self.name = node.GetName()
        self.image = node.GetImageData()  # the object itself: a result is loaded into a new one
        self.matrix = vtk.vtkMatrix4x4()
        node.GetIJKToRASMatrix(self.matrix)
        self.transform_id = node.GetTransformNodeID()
        self.attributes = {name: node.GetAttribute(name) for name in node.GetAttributeNames() or ()}
        self.references = {role: self._reference_ids(role) for role in self._roles()}
        self.displays = []
        for index in range(node.GetNumberOfDisplayNodes()):
            display = node.GetNthDisplayNode(index)
            if display is not None:
                saved = display.CreateNodeInstance()
                saved.CopyContent(display)  # window / level, colour table, visibility, ...
                self.displays.append((display, saved))
        self.hierarchy_item, self.hierarchy_parent = self._hierarchy_place()

    def _roles(self) -> list[str]:
        roles = [self.node.GetNthNodeReferenceRole(i) for i in range(self.node.GetNumberOfNodeReferenceRoles())]
        return [role for role in roles if role and role not in _ROLES_KEPT_APART]

    def _reference_ids(self, role: str) -> list[str]:
        return [self.node.GetNthNodeReferenceID(role, i) for i in range(self.node.GetNumberOfNodeReferences(role))]

    def _hierarchy_place(self) -> tuple[int, int]:
        import slicer

        hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(self.scene)
        item = hierarchy.GetItemByDataNode(self.node) if hierarchy is not None else 0
        return item, (hierarchy.GetItemParent(item) if item else 0)

    def restore(self) -> None:
        """Put the node back as it was; each part is restored even when another fails (and that is logged)."""
        if not self.scene.IsNodePresent(self.node):
            return
        modifying = self.node.StartModify()
        try:
            for part in (self._restore_volume, self._restore_references, self._restore_displays,
                         self._restore_hierarchy):
                try:
                    part()
                except Exception:  # noqa: BLE001 (restore what can be restored; the run already failed)
                    logging.exception("MedTranslate: could not restore %s (%s)", self.name, part.__name__)
        finally:
            self.node.EndModify(modifying)

    def _restore_volume(self) -> None:
        node = self.node
        node.SetName(self.name)
        if node.GetImageData() is not self.image:
            node.SetAndObserveImageData(self.image)
        node.SetIJKToRASMatrix(self.matrix)
        node.SetAndObserveTransformNodeID(self.transform_id)
        for name in node.GetAttributeNames() or ():
            if name not in self.attributes:
                node.RemoveAttribute(name)
        for name, value in self.attributes.items():
            node.SetAttribute(name, value)

    def _restore_references(self) -> None:
        for role in set(self._roles()) | set(self.references):
            saved = self.references.get(role, [])
            if self._reference_ids(role) != saved:
                self.node.RemoveNodeReferenceIDs(role)
                for node_id in saved:
                    if self.scene.GetNodeByID(node_id) is not None:
                        self.node.AddNodeReferenceID(role, node_id)

    def _restore_displays(self) -> None:
        kept = {display.GetID() for display, _ in self.displays}
        made = [self.node.GetNthDisplayNode(i) for i in range(self.node.GetNumberOfDisplayNodes())]
        for display in made:  # made by the run (a volume that had none): it goes with the run
            if display is not None and display.GetID() not in kept and self.scene.IsNodePresent(display):
                self.scene.RemoveNode(display)
        for display, saved in self.displays:
            if self.scene.IsNodePresent(display):
                display.CopyContent(saved)

    def _restore_hierarchy(self) -> None:
        import slicer

        hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(self.scene)
        item, parent = self._hierarchy_place()
        if not item:
            return
        if not self.hierarchy_item:  # the run placed a node that had no item: it has none again
            hierarchy.RemoveItem(item, False, False)
        elif parent != self.hierarchy_parent:
            hierarchy.SetItemParent(item, self.hierarchy_parent)


def snapshot_output(scene: Any, output_node: Any, map_role: str) -> list[NodeSnapshot]:
    """Snapshots of a reused output node and of the uncertainty map it links to (reference role ``map_role``)."""
    nodes = [output_node, output_node.GetNodeReference(map_role)] if output_node is not None else []
    return [NodeSnapshot(scene, node) for node in nodes if node is not None and scene.IsNodePresent(node)]


def remove_with_display(scene: Any, node: Any) -> None:
    """Remove a volume node and the display and storage nodes it made."""
    helpers = [node.GetNthDisplayNode(i) for i in range(node.GetNumberOfDisplayNodes())]
    helpers += [node.GetNthStorageNode(i) for i in range(node.GetNumberOfStorageNodes())]
    for helper in [*helpers, node]:
        if helper is not None and scene.IsNodePresent(helper):
            scene.RemoveNode(helper)


def restore_all(snapshots: list[NodeSnapshot]) -> None:
    """Restore each snapshot, the last taken first."""
    for snapshot in reversed(snapshots):
        snapshot.restore()
