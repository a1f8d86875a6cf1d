@problemName Tiny
@timeStamps false
@missing false
@univariate false
@dimensions 2
@equalLength false
@classLabel true up down
@data
1,2,3,4,5,6:1,2,3,4,5,6:down
2,2:3,3:up
