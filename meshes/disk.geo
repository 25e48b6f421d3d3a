// Disk of radius R centred at the origin, target cell size h.
// Parameters may be overridden: gmsh -setnumber h 0.1 -setnumber R 3 -2 disk.geo
DefineConstant[ h = 0.2, R = 1.0 ];
SetFactory("OpenCASCADE");
Disk(1) = {0, 0, 0, R, R};
Physical Surface("domain", 1) = {1};
Physical Curve("boundary", 1) = {1};
Mesh.CharacteristicLengthMin = h;
Mesh.CharacteristicLengthMax = h;
