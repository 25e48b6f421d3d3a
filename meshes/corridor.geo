// Corridor [0,L]x[0,W] with a round obstacle in the middle and an exit at x = L.
// Physical groups: walls (1), exit (2), obstacle (3) — the facet tags of [[boundary]] tables.
DefineConstant[ h = 0.1, L = 4.0, W = 1.0, r = 0.2 ];
SetFactory("OpenCASCADE");
Rectangle(1) = {0, 0, 0, L, W};
Disk(2) = {L/2, W/2, 0, r};
BooleanDifference(3) = { Surface{1}; Delete; }{ Surface{2}; Delete; };
tol = 1e-6;
door() = Curve In BoundingBox{L - tol, -tol, -tol, L + tol, W + tol, tol};
obst() = Curve In BoundingBox{L/2 - r - tol, W/2 - r - tol, -tol, L/2 + r + tol, W/2 + r + tol, tol};
walls() = Abs(Boundary{ Surface{3}; });
walls() -= door();
walls() -= obst();
Physical Surface("domain", 1) = {3};
Physical Curve("walls", 1) = walls();
Physical Curve("exit", 2) = door();
Physical Curve("obstacle", 3) = obst();
Mesh.CharacteristicLengthMin = h;
Mesh.CharacteristicLengthMax = h;
