# A tiny hand-written UEA-style file for the .ts parser tests (2 dimensions, unequal lengths, one missing value).
% a comment in the ARFF style, as in aeon's UnitTest files
@problemName Tiny
@timeStamps false
@missing true
@univariate false
@dimensions 2
@equalLength false
@classLabel true up down
@data
1,2,3:10,20,30:up
4,?,6,7:40,50,60,70:down

1,1:2,2:up
0,1,2,3,4:5,6,7,8,9:down
