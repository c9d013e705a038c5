"""Drift: where the kernel's registry and the saved notebook no longer declare the same pipeline.

A kernel remembers cells as they were when they ran; the file is what production builds from.
`compare` is pure (two lists of registry.RegisteredCell); a cell is matched by its cell id when
both sides have one, else by its text.
"""


def _text(cell):
    return "\n".join(line.rstrip() for line in cell.spec.source.strip().splitlines())


def _what(cell):
    spec = cell.spec
    return f"step {spec.name!r}" if spec.kind == "step" else f"%%{spec.kind}"


def compare(kernel_cells, file_cells):
    """What differs, one sentence each, in file order; [] when kernel and file agree."""
    pairs, kernel_left, file_left = [], list(kernel_cells), list(file_cells)
    for known in kernel_cells:  # 1. by cell id
        match = next((cell for cell in file_left if known.has_id and cell.cell_id == known.cell_id), None)
        if match is not None:
            pairs.append((known, match))
            kernel_left.remove(known)
            file_left.remove(match)
    for known in list(kernel_left):  # 2. by text
        match = next((cell for cell in file_left if _text(cell) == _text(known)), None)
        if match is not None:
            pairs.append((known, match))
            kernel_left.remove(known)
            file_left.remove(match)
    for saved in list(file_left):  # 3. same step, other text: edited since it ran
        match = next((cell for cell in kernel_left if (cell.spec.kind, cell.spec.name) == (saved.spec.kind, saved.spec.name)), None)
        if match is not None:
            pairs.append((match, saved))
            kernel_left.remove(match)
            file_left.remove(saved)

    position = {id(cell): index for index, cell in enumerate(file_cells)}
    found = []
    for known, saved in sorted(pairs, key=lambda pair: position[id(pair[1])]):
        if _text(known) != _text(saved):
            found.append(
                f"{saved.label} ({_what(saved)}) was edited in the notebook but not re-run: the kernel has "
                f"the version of {known.label}. Run it again."
            )
    for saved in file_left:
        found.append(f"{saved.label} ({_what(saved)}) is in the saved notebook but not registered in the kernel: run it.")
    file_steps = {cell.spec.name for cell in file_cells if cell.spec.kind == "step"}
    for known in kernel_left:
        if known.spec.kind == "step" and known.spec.name not in file_steps:
            found.append(
                f"step {known.spec.name!r} ({known.label}) is registered in the kernel but no longer in the saved "
                f"notebook: `%pipeline remove {known.spec.name}`."
            )
        else:
            found.append(
                f"{known.label} ({_what(known)}) is registered in the kernel but not in the saved notebook "
                "(deleted, or its magic removed): `%pipeline reset` and re-run the notebook's cells."
            )
    found += _order(kernel_cells, pairs, position)
    return found


def _order(kernel_cells, pairs, position):
    """The first two cells the kernel registered in the opposite order to the file's."""
    in_file = {id(known): position[id(saved)] for known, saved in pairs}
    registered = [cell for cell in kernel_cells if id(cell) in in_file]
    saved_of = {id(known): saved for known, saved in pairs}
    for before, after in zip(registered, registered[1:]):
        if in_file[id(before)] > in_file[id(after)]:
            first, second = saved_of[id(after)], saved_of[id(before)]
            return [
                f"The kernel registered {second.label} ({_what(second)}) before {first.label} ({_what(first)}), "
                "the opposite of the notebook's order, which decides where each step's inputs come from: "
                "`%pipeline reset` and run the cells top to bottom."
            ]
    return []
