// L-shaped domain [-R,R]^2 minus the quadrant (0,R)x(0,R)... (re-entrant corner at the origin).
DefineConstant[ h = 0.2, R = 1.0 ];
SetFactory("OpenCASCADE");
Rectangle(1) = {-R, -R, 0, 2*R, 2*R};
Rectangle(2) = {0, 0, 0, R, R};
BooleanDifference(3) = { Surface{1}; Delete; }{ Surface{2}; Delete; };
Physical Surface("domain", 1) = {3};
Physical Curve("boundary", 1) = Abs(Boundary{ Surface{3}; });
Mesh.CharacteristicLengthMin = h;
Mesh.CharacteristicLengthMax = h;
