// A box room (0, Lx) x (0, Ly) x (0, Lz) with a cylindrical pillar of radius r from floor to
// ceiling at (cx, cy), cut out; target cell size h.  Physical groups: volume 1 "room",
// surface 1 "walls" (the outer box), surface 2 "pillar".
DefineConstant[ h = 0.15, Lx = 3.0, Ly = 1.5, Lz = 1.0, cx = 1.5, cy = 0.75, r = 0.3 ];
SetFactory("OpenCASCADE");
Box(1) = {0, 0, 0, Lx, Ly, Lz};
Cylinder(2) = {cx, cy, 0, 0, 0, Lz, r};
BooleanDifference(3) = { Volume{1}; Delete; }{ Volume{2}; Delete; };
Physical Volume("room", 1) = {3};
pillar() = Surface In BoundingBox{cx - r - 1e-6, cy - r - 1e-6, -1e-6,
                                  cx + r + 1e-6, cy + r + 1e-6, Lz + 1e-6};
all() = Abs(Boundary{ Volume{3}; });
walls() = all();
walls() -= pillar();
Physical Surface("walls", 1) = walls();
Physical Surface("pillar", 2) = pillar();
Mesh.CharacteristicLengthMin = h;
Mesh.CharacteristicLengthMax = h;
Mesh.Algorithm3D = 10;   // HXT: 4-5x faster than the default Delaunay at 50k+ vertices
