// Annulus r_in < |x| < R centred at the origin, target cell size h.
DefineConstant[ h = 0.2, R = 1.0, r_in = 0.5 ];
SetFactory("OpenCASCADE");
Disk(1) = {0, 0, 0, R, R};
Disk(2) = {0, 0, 0, r_in, r_in};
BooleanDifference(3) = { Surface{1}; Delete; }{ Surface{2}; Delete; };
Physical Surface("domain", 1) = {3};
outer() = Abs(Boundary{ Surface{3}; });
Physical Curve("outer", 1) = {outer[0]};
Physical Curve("inner", 2) = {outer[1]};
Mesh.CharacteristicLengthMin = h;
Mesh.CharacteristicLengthMax = h;
