// A room [0,L]x[0,W] with three round pillars and two doors: one in the right wall
// (y in [W/2 - d/2, W/2 + d/2]) and one in the top wall (x in [x_top, x_top + d]).
// Physical groups (facet tags of [[boundary]] tables): walls (1), door_right (2),
// door_top (3), pillars (4).
DefineConstant[ h = 0.2, L = 4.0, W = 3.0, d = 0.6, x_top = 0.8, r = 0.2 ];
Point(1) = {0, 0, 0, h};
Point(2) = {L, 0, 0, h};
Point(3) = {L, W/2 - d/2, 0, h};
Point(4) = {L, W/2 + d/2, 0, h};
Point(5) = {L, W, 0, h};
Point(6) = {x_top + d, W, 0, h};
Point(7) = {x_top, W, 0, h};
Point(8) = {0, W, 0, h};
Line(1) = {1, 2};
Line(2) = {2, 3};
Line(3) = {3, 4};
Line(4) = {4, 5};
Line(5) = {5, 6};
Line(6) = {6, 7};
Line(7) = {7, 8};
Line(8) = {8, 1};
Curve Loop(1) = {1, 2, 3, 4, 5, 6, 7, 8};
// pillars at (2, 1), (2, 2), (3, 1.5)
cx[] = {2.0, 2.0, 3.0};
cy[] = {1.0, 2.0, 1.5};
arcs[] = {};
For i In {0:2}
  c = newp; Point(c) = {cx[i], cy[i], 0, h};
  a = newp; Point(a) = {cx[i] + r, cy[i], 0, h};
  b = newp; Point(b) = {cx[i], cy[i] + r, 0, h};
  e = newp; Point(e) = {cx[i] - r, cy[i], 0, h};
  f = newp; Point(f) = {cx[i], cy[i] - r, 0, h};
  c1 = newc; Circle(c1) = {a, c, b};
  c2 = newc; Circle(c2) = {b, c, e};
  c3 = newc; Circle(c3) = {e, c, f};
  c4 = newc; Circle(c4) = {f, c, a};
  cl = newcl; Curve Loop(cl) = {c1, c2, c3, c4};
  loops[i] = cl;
  arcs[] += {c1, c2, c3, c4};
EndFor
Plane Surface(1) = {1, loops[0], loops[1], loops[2]};
Physical Surface("domain", 1) = {1};
Physical Curve("walls", 1) = {1, 2, 4, 5, 7, 8};
Physical Curve("door_right", 2) = {3};
Physical Curve("door_top", 3) = {6};
Physical Curve("pillars", 4) = arcs[];
Mesh.CharacteristicLengthMin = h;
Mesh.CharacteristicLengthMax = h;
