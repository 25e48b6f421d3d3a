// Ball of radius R centred at the origin, target cell size h.
DefineConstant[ h = 0.3, R = 1.0 ];
SetFactory("OpenCASCADE");
Sphere(1) = {0, 0, 0, R};
Physical Volume("domain", 1) = {1};
Physical Surface("boundary", 1) = {1};
Mesh.CharacteristicLengthMin = h;
Mesh.CharacteristicLengthMax = h;
