"""Regenerate the small example meshes of this folder from their gmsh sources.

    bin/fem-env python3 meshes/generate.py

Each ``<name>.geo`` is meshed at a coarse size and written as ``<name>.msh`` (gmsh 4.1),
keeping its physical groups (cell and facet tags).
"""
from pathlib import Path

from fem_mfc.mesh import generate_gmsh

HERE = Path(__file__).resolve().parent
SIZES = {"disk": (2, 0.25), "annulus": (2, 0.15), "lshape": (2, 0.2), "ball": (3, 0.4),
         "corridor": (2, 0.15), "room": (2, 0.2),
         "room3d": (3, 0.3)}

if __name__ == "__main__":
    for name, (dim, h) in SIZES.items():
        gmsh = generate_gmsh(HERE / f"{name}.geo", dim, {"h": h})
        gmsh.option.setNumber("Mesh.MshFileVersion", 4.1)
        gmsh.write(str(HERE / f"{name}.msh"))
        gmsh.finalize()
        print(f"wrote {name}.msh")
